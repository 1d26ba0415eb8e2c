// Which lock guards which state, written on the declaration so that it is
// read where the state is: clang's thread-safety attributes as macros.
//
// What they check: clang resolves each named lock, so a misspelt or renamed
// mutex is a compile error in the clang builds (the sanitizer presets in
// CMakePresets.json). gcc does not know the attributes; there they vanish.
//
// What they do not check: libstdc++'s std::mutex and std::lock_guard carry no
// capability attributes, so clang's -Wthread-safety analysis cannot see the
// locking and is not enabled (it would flag every access). TSan checks the
// same invariants at run time: scripts/sanitizers.sh runs the load pipeline,
// the HTTP, S3 and Redis connection pools and the S3 uploader under it.
#pragma once

#if defined(__clang__)
#define TZR_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define TZR_THREAD_ANNOTATION(x)
#endif

// The member is read and written only with `lock` held.
#define TZR_GUARDED_BY(lock) TZR_THREAD_ANNOTATION(guarded_by(lock))
// The function is called with `lock` held.
#define TZR_REQUIRES(...) TZR_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
