// goexec runs a command with os/exec and reports its output and exit status.
//
// Go starts children with its own raw clone(CLONE_VM|CLONE_VFORK) and execve, no libc
// involved; the child must be traced like any other. Usage: goexec CMD [ARGS...]; prints
// "child_output <stdout of CMD>" and then "child_exit N".
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goexec CMD [ARGS...]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("child_output %s", out)
	fmt.Printf("child_exit %d\n", code)
}
