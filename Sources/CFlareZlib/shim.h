#ifndef CFLAREZLIB_SHIM_H
#define CFLAREZLIB_SHIM_H
#include <zlib.h>

// inflateInit2 and deflateInit2 are function-like macros, which Swift cannot import.
static inline int cflare_inflateInit2(z_streamp strm, int windowBits) {
  return inflateInit2(strm, windowBits);
}
static inline int cflare_deflateInit2(z_streamp strm, int level, int method, int windowBits,
                                      int memLevel, int strategy) {
  return deflateInit2(strm, level, method, windowBits, memLevel, strategy);
}
#endif
