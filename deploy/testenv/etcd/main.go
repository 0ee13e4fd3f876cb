// Command etcd: the upstream etcd server (etcdmain), built for tensor-fusion's tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
