#ifndef CFLAREOPENBLAS_SHIM_H
#define CFLAREOPENBLAS_SHIM_H
// pkg-config's -I for openblas comes first, so this resolves to OpenBLAS's own cblas.h
// (Debian: usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h), never netlib's.
#include <cblas.h>
#include <stddef.h>

// LAPACK's divide-and-conquer SVD, which OpenBLAS exports (Fortran calling convention: every
// argument by pointer, column-major matrices, and the hidden length of the character argument).
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s,
             float *u, const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork,
             int *iwork, int *info, size_t jobz_length);
#endif
