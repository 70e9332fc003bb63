"""Local stack of real components for dev, tests and benchmarks, and the harness over it.

Kafka, etcd + kube-apiserver and dnsmasq on loopback, started by pid and
stopped by pid (see `stack.Stack`); `harness` starts and stops `mailpipe`
children, waits for conditions and calls kubectl and helm for the demo, the
tests and the benchmarks. Never shipped in the image (ARCHITECTURE.md, components).
"""
