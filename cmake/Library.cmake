# libkvant.a: the whole runtime behind include/kvant.h in one static archive (the
# internal libraries' objects plus the C API), installed with a CMake package
# (find_package(kvant) -> kvant::kvant) and a pkg-config file.
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)

set(_kvant_parts kvant_format kvant_kernels kvant_tokenizer kvant_runtime)
if(KVANT_HAVE_CUDA)
  list(APPEND _kvant_parts kvant_kernels_cuda)
endif()
set(_kvant_objects)
foreach(part IN LISTS _kvant_parts)
  list(APPEND _kvant_objects $<TARGET_OBJECTS:${part}>)
endforeach()

# The C API compiled against the parts; the archive then holds every part's objects.
add_library(kvant_capi OBJECT runtime/c_api.cpp)
target_link_libraries(kvant_capi PRIVATE kvant_runtime kvant_tokenizer kvant_options)
add_library(kvant STATIC $<TARGET_OBJECTS:kvant_capi> ${_kvant_objects})
add_library(kvant::kvant ALIAS kvant)
set_target_properties(kvant PROPERTIES LINKER_LANGUAGE CXX)
target_include_directories(kvant PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:include>)
# What the objects need at link time (the same list as kvantConfig.cmake and kvant.pc).
target_link_libraries(kvant INTERFACE kvant_openmp Threads::Threads PkgConfig::PCRE2 PkgConfig::UTF8PROC)
if(KVANT_SANITIZE)  # instrumented objects need the sanitizer runtimes (kvant-simple, in this tree)
  target_link_options(kvant INTERFACE -fsanitize=${_kvant_san})
endif()
if(KVANT_HAVE_CUDA)
  target_link_libraries(kvant INTERFACE CUDA::cudart_static ${CMAKE_DL_LIBS})
endif()
set_target_properties(kvant PROPERTIES OUTPUT_NAME kvant PUBLIC_HEADER include/kvant.h)

install(TARGETS kvant ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES include/kvant.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# What a program linking libkvant.a needs besides it.
set(KVANT_PC_LIBS_CUDA "")
if(KVANT_HAVE_CUDA)
  set(KVANT_PC_LIBS_CUDA "-L${CUDAToolkit_LIBRARY_DIR} -lcudart_static -lrt -ldl")
endif()
configure_package_config_file(cmake/kvantConfig.cmake.in ${CMAKE_BINARY_DIR}/kvantConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvant)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/kvantConfigVersion.cmake COMPATIBILITY SameMinorVersion)
# The pkg-config file finds the prefix from where it lies (relocatable installs).
file(RELATIVE_PATH KVANT_PC_UP "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
configure_file(cmake/kvant.pc.in ${CMAKE_BINARY_DIR}/kvant.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/kvantConfig.cmake ${CMAKE_BINARY_DIR}/kvantConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvant)
install(FILES ${CMAKE_BINARY_DIR}/kvant.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
