// Command pause is the node's pod sandbox image: the process that holds a
// pod's namespaces open while its containers come and go. No registry is
// reachable from this machine kind, so the stack builds this instead of
// pulling registry.k8s.io/pause; it does what that one does: wait for a
// signal to stop, and reap orphans when it is PID 1 of a shared PID namespace.
//
// Two other things it does, for the node's tests (a test image with a client
// in it would need a registry or a root filesystem; this needs neither):
//   - `pause apiserver-readyz`: from inside a pod, ask the API server's /readyz
//     the way in-cluster clients find it (KUBERNETES_SERVICE_HOST/PORT, the
//     ServiceAccount token and CA), print the answer, exit 0 only on 200;
//   - `pause tcp-banner HOST:PORT`: connect, print the first line the server
//     sends (an SMTP greeting), exit 0 only if there was one.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// One request on a loopback-speed link; anything slower is a failure to report.
const readyzTimeout = 10 * time.Second

func main() {
	if len(os.Args) > 1 && os.Args[1] == "apiserver-readyz" {
		os.Exit(apiserverReadyz())
	}
	if len(os.Args) > 2 && os.Args[1] == "tcp-banner" {
		os.Exit(tcpBanner(os.Args[2]))
	}
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

func apiserverReadyz() int {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		fmt.Println("no KUBERNETES_SERVICE_HOST/PORT in the environment")
		return 2
	}
	token, err := os.ReadFile(serviceAccountDir + "/token")
	if err != nil {
		fmt.Println("no ServiceAccount token:", err)
		return 2
	}
	caPEM, err := os.ReadFile(serviceAccountDir + "/ca.crt")
	if err != nil {
		fmt.Println("no ServiceAccount CA:", err)
		return 2
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout:   readyzTimeout,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	url := "https://" + net.JoinHostPort(host, port) + "/readyz"
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := client.Do(req)
	if err != nil {
		fmt.Println("GET", url, "failed:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	fmt.Printf("GET %s: %d %s\n", url, resp.StatusCode, strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}

func tcpBanner(address string) int {
	conn, err := net.DialTimeout("tcp", address, readyzTimeout)
	if err != nil {
		fmt.Println("connect", address, "failed:", err)
		return 1
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(readyzTimeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		fmt.Println("read from", address, "failed:", err)
		return 1
	}
	fmt.Printf("%s: %s\n", address, strings.TrimSpace(line))
	return 0
}
