# Every dependency is a Debian package (see .ci/run); nothing is downloaded at build time.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 2.0 REQUIRED)
find_package(fmt 9 REQUIRED)
# The tokenizer: PCRE2 runs the pre-tokenizer regexes (UTF mode, JIT), utf8proc does
# Unicode normalization and character properties.
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
if(KVANT_PORTABLE)
  # Binaries for hosts without these packages (the GPU machine): link the archives.
  find_library(KVANT_PCRE2_STATIC libpcre2-8.a HINTS ${PCRE2_LIBRARY_DIRS} REQUIRED)
  find_library(KVANT_UTF8PROC_STATIC libutf8proc.a HINTS ${UTF8PROC_LIBRARY_DIRS} REQUIRED)
  set_property(TARGET PkgConfig::PCRE2 PROPERTY INTERFACE_LINK_LIBRARIES ${KVANT_PCRE2_STATIC})
  set_property(TARGET PkgConfig::UTF8PROC PROPERTY INTERFACE_LINK_LIBRARIES ${KVANT_UTF8PROC_STATIC})
endif()

# xxHash is used header-only (XXH_INLINE_ALL): fast, and no shared library to carry.
find_path(KVANT_XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
add_library(kvant_xxhash INTERFACE)
target_include_directories(kvant_xxhash SYSTEM INTERFACE ${KVANT_XXHASH_INCLUDE_DIR})
target_compile_definitions(kvant_xxhash INTERFACE XXH_INLINE_ALL)

# fmt header-only, for the same reason.
set(KVANT_FMT fmt::fmt-header-only)

if(KVANT_PORTABLE)
  # libgomp.a from GCC: the binaries then need no OpenMP runtime on the host.
  find_library(KVANT_GOMP_STATIC NAMES libgomp.a PATHS ${CMAKE_CXX_IMPLICIT_LINK_DIRECTORIES})
endif()
add_library(kvant_openmp INTERFACE)
if(KVANT_PORTABLE AND KVANT_GOMP_STATIC)
  target_compile_options(kvant_openmp INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fopenmp>)
  target_link_libraries(kvant_openmp INTERFACE ${KVANT_GOMP_STATIC} Threads::Threads ${CMAKE_DL_LIBS})
else()
  target_link_libraries(kvant_openmp INTERFACE OpenMP::OpenMP_CXX)
endif()
