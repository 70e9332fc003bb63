"""Local stack of real components (Kafka, etcd + kube-apiserver, dnsmasq) for dev, tests and benchmarks."""
