// Command manifests prints, as one YAML stream, what virt-operator installs for the parts
// of KubeVirt the test environment runs: every CRD, the RBAC of the cluster roles,
// virt-api, virt-controller and virt-handler, and virt-api's validating and mutating
// webhook configurations. It calls virt-operator's own generator functions, so the objects
// are those of a real install of the KubeVirt version this module requires.
//
// Usage: manifests [-namespace kubevirt]
package main

import (
	"flag"
	"fmt"
	"os"

	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/rbac"
)

func main() {
	namespace := flag.String("namespace", "kubevirt", "the namespace KubeVirt is installed in")
	flag.Parse()
	if err := run(*namespace); err != nil {
		fmt.Fprintln(os.Stderr, "manifests:", err)
		os.Exit(1)
	}
}

func run(namespace string) error {
	// The CRDs virt-operator's install strategy creates (GenerateCurrentInstallStrategy),
	// plus the KubeVirt CRD, which the operator's own deployment brings.
	crdFuncs := []func() (*extv1.CustomResourceDefinition, error){
		components.NewKubeVirtCrd,
		components.NewVirtualMachineInstanceCrd, components.NewPresetCrd, components.NewReplicaSetCrd,
		components.NewVirtualMachineCrd, components.NewVirtualMachineInstanceMigrationCrd,
		components.NewVirtualMachineSnapshotCrd, components.NewVirtualMachineSnapshotContentCrd,
		components.NewVirtualMachineRestoreCrd, components.NewVirtualMachineInstancetypeCrd,
		components.NewVirtualMachineClusterInstancetypeCrd, components.NewVirtualMachinePoolCrd,
		components.NewMigrationPolicyCrd, components.NewVirtualMachinePreferenceCrd,
		components.NewVirtualMachineClusterPreferenceCrd, components.NewVirtualMachineExportCrd,
		components.NewVirtualMachineCloneCrd, components.NewVirtualMachineBackupCrd,
		components.NewVirtualMachineBackupTrackerCrd,
	}
	var objects []interface{}
	for _, newCrd := range crdFuncs {
		crd, err := newCrd()
		if err != nil {
			return err
		}
		objects = append(objects, crd)
	}
	var roles []runtime.Object
	roles = append(roles, rbac.GetAllCluster()...)
	roles = append(roles, rbac.GetAllApiServer(namespace)...)
	roles = append(roles, rbac.GetAllController(namespace, true)...)
	roles = append(roles, rbac.GetAllHandler(namespace)...)
	for _, role := range roles {
		objects = append(objects, role)
	}
	objects = append(objects,
		components.NewVirtAPIValidatingWebhookConfiguration(namespace),
		components.NewVirtAPIMutatingWebhookConfiguration(namespace),
	)
	for _, object := range objects {
		out, err := yaml.Marshal(object)
		if err != nil {
			return err
		}
		fmt.Printf("---\n%s", out)
	}
	return nil
}
