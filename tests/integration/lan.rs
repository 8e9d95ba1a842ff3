//! Multi-host tests on a LAN of network namespaces (added below).
