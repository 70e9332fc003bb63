// Command pause is the node's pod sandbox image: the process that holds a
// pod's namespaces open while its containers come and go. No registry is
// reachable from this machine kind, so the stack builds this instead of
// pulling registry.k8s.io/pause; it does what that one does: wait for a
// signal to stop, and reap orphans when it is PID 1 of a shared PID namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
