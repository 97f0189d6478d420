// Non-temporal (streaming) vector stores, which Swift cannot express: clang's
// __builtin_nontemporal_store on 32- and 64-byte float vectors. Inlined into the Swift row kernels,
// they become vmovntps (ymm under -target-cpu haswell, zmm under skylake-avx512). The destination
// must be aligned to the vector size (the caller checks); the source is read through an unaligned
// type, since a Swift value's address is only guaranteed 16-byte alignment.
// Used by Kernels' StreamingStores (see there).
typedef float mnv2_v8 __attribute__((vector_size(32)));
typedef float mnv2_v16 __attribute__((vector_size(64)));
typedef float mnv2_v8u __attribute__((vector_size(32), aligned(4)));
typedef float mnv2_v16u __attribute__((vector_size(64), aligned(4)));

static inline __attribute__((always_inline)) void mnv2_stream8(float *p, const float *v) {
  mnv2_v8 value = *(const mnv2_v8u *)v;
  __builtin_nontemporal_store(value, (mnv2_v8 *)p);
}

static inline __attribute__((always_inline)) void mnv2_stream16(float *p, const float *v) {
  mnv2_v16 value = *(const mnv2_v16u *)v;
  __builtin_nontemporal_store(value, (mnv2_v16 *)p);
}
