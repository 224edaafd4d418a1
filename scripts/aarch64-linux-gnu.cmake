# CMake toolchain for building the addon for linux-arm64 on an x86-64 Debian with its multiarch
# packages: Debian's cross compiler, and LibTorch's arm64 libraries and CMake config under
# /usr/lib/aarch64-linux-gnu (scripts/arm64-smoke.sh sets such a root up).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# find_package and find_library look in /usr/lib/aarch64-linux-gnu, never at the host's libraries.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
