"""Local stack of real components for dev, tests and benchmarks.

Kafka, etcd + kube-apiserver and dnsmasq on loopback, started by pid and
stopped by pid (see `stack.Stack`)."""
