module mirrortrace.test/goclient

go 1.19
