module mirrortrace/tests/goexec

go 1.19
