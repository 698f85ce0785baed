module mirrortrace.test/gotcpdns

go 1.19
