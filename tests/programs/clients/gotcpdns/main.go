// gotcpdns resolves names with Go's pure resolver over TCP only.
//
// Go's resolver falls back to TCP when a UDP answer is truncated; a custom Dial that always
// dials "tcp" forces that path, so the test can check that TCP port-53 connections reach the
// pod's nameserver too. The nameserver address is still the one /etc/resolv.conf names.
//
// Usage (errors go to stderr as "error: <Go error text>", exit status 1):
//
//	gotcpdns lookup NAME               addresses, one per line, sorted
//	gotcpdns srv SERVICE PROTO NAME    "TARGET PORT PRIORITY WEIGHT" lines
//
// After the answer, one line "dialed NETWORK ADDRESS ..." lists every distinct dial made.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

var (
	mu     sync.Mutex
	dialed = map[string]bool{}
)

func resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			mu.Lock()
			dialed["tcp "+address] = true
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", address)
		},
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "error: %v\n", err)
	os.Exit(1)
}

func report() {
	mu.Lock()
	defer mu.Unlock()
	var seen []string
	for d := range dialed {
		seen = append(seen, d)
	}
	sort.Strings(seen)
	fmt.Printf("dialed %s\n", strings.Join(seen, " "))
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gotcpdns lookup NAME | srv SERVICE PROTO NAME")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := resolver()
	switch os.Args[1] {
	case "lookup":
		addrs, err := r.LookupHost(ctx, os.Args[2])
		if err != nil {
			fail(err)
		}
		sort.Strings(addrs)
		for _, a := range addrs {
			fmt.Println(a)
		}
	case "srv":
		if len(os.Args) != 5 {
			os.Exit(2)
		}
		_, srvs, err := r.LookupSRV(ctx, os.Args[2], os.Args[3], os.Args[4])
		if err != nil {
			fail(err)
		}
		for _, s := range srvs {
			fmt.Printf("%s %d %d %d\n", s.Target, s.Port, s.Priority, s.Weight)
		}
	default:
		os.Exit(2)
	}
	report()
}
