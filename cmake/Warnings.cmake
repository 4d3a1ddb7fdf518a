# Warnings (errors in CI), sanitizers and portable linking, applied to every kvant target
# through the interface target kvant_options.
add_library(kvant_options INTERFACE)
target_compile_options(kvant_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wformat=2 -Wimplicit-fallthrough>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${KVANT_WERROR}>>:-Werror>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${KVANT_WERROR}>>:-Werror=all-warnings>)

if(KVANT_SANITIZE)
  string(REPLACE ";" "," _kvant_san "${KVANT_SANITIZE}")
  message(STATUS "kvant: sanitizers ${_kvant_san}")
  target_compile_options(kvant_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${_kvant_san} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(kvant_options INTERFACE -fsanitize=${_kvant_san})
  # GCC's flow-based warnings misfire on sanitizer-instrumented code (impossible sizes
  # after inlining); the normal build keeps them as errors.
  target_compile_options(kvant_options INTERFACE $<$<CXX_COMPILER_ID:GNU>:
    -Wno-stringop-overflow -Wno-array-bounds -Wno-restrict -Wno-maybe-uninitialized>)
endif()

if(KVANT_PORTABLE)
  target_link_options(kvant_options INTERFACE -static-libstdc++ -static-libgcc)
endif()
