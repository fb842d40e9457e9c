//! Ports of kube-proxy's table-driven tests (pkg/proxy), case by case.
mod categorize;
mod slices;
