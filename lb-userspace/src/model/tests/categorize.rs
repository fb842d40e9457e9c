//! kube-proxy TestCategorizeEndpoints (pkg/proxy/topology_test.go).
