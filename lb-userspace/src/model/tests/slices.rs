//! kube-proxy EndpointSliceCache tests (pkg/proxy/endpointslicecache_test.go).
