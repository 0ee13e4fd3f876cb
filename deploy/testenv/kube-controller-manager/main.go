// Command kube-controller-manager: the upstream kube-controller-manager, built from k8s.io/kubernetes for tensor-fusion's tests.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
