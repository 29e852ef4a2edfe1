// Package balancer is endpoint discovery and choice for the proxy. For now
// it holds MeshCache, the bounded memory of which destination addresses
// run a mesh proxy (answer mutual TLS on the mesh port) and which do not.
//
// It knows nothing of the proxy, listeners or identities.
package balancer
