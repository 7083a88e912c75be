package registry

// SlimPod is what the informer keeps of a pod.
var SlimPod = slimPod
