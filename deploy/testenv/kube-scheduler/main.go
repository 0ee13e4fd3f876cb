// Command kube-scheduler: the upstream kube-scheduler, built from k8s.io/kubernetes for tensor-fusion's tests.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}
