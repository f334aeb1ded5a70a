#ifndef CFLAREOPENBLAS_SHIM_H
#define CFLAREOPENBLAS_SHIM_H
// pkg-config's -I for openblas comes first, so this resolves to OpenBLAS's own cblas.h
// (Debian: usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h), never netlib's.
#include <cblas.h>
#endif
