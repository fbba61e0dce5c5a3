// Command manifests prints, as one YAML stream, the RBAC cdi-operator installs for
// cdi-controller (ServiceAccount cdi-sa, its ClusterRole, Role and their bindings), from
// cdi-operator's own resource factories, so the controller runs with the permissions a
// real install gives it.
//
// Usage: manifests [-namespace cdi]
package main

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/yaml"

	"kubevirt.io/containerized-data-importer/pkg/operator/resources/cluster"
	"kubevirt.io/containerized-data-importer/pkg/operator/resources/namespaced"
)

func main() {
	namespace := flag.String("namespace", "cdi", "the namespace CDI is installed in")
	flag.Parse()
	if err := run(*namespace); err != nil {
		fmt.Fprintln(os.Stderr, "manifests:", err)
		os.Exit(1)
	}
}

func run(namespace string) error {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	clusterScoped, err := cluster.CreateStaticResourceGroup("controller-rbac",
		&cluster.FactoryArgs{Namespace: namespace})
	if err != nil {
		return err
	}
	namespacedObjects, err := namespaced.CreateResourceGroup("controller",
		&namespaced.FactoryArgs{Namespace: namespace, Verbosity: "1", PullPolicy: "IfNotPresent"})
	if err != nil {
		return err
	}
	for _, object := range append(clusterScoped, namespacedObjects...) {
		gvk, err := apiutil.GVKForObject(object, scheme)
		if err != nil {
			return err
		}
		switch gvk.Kind {
		case "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding":
		default:
			continue // the Deployment and Service are the engine's business
		}
		object.GetObjectKind().SetGroupVersionKind(gvk)
		if err := print(object); err != nil {
			return err
		}
	}
	return nil
}

func print(object client.Object) error {
	out, err := yaml.Marshal(object)
	if err != nil {
		return err
	}
	fmt.Printf("---\n%s", out)
	return nil
}
