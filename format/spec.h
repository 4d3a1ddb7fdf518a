// Constants of the .kvant file layout; FORMAT.md is the normative description.
#pragma once

#include <cstdint>

namespace kvant::spec {

inline constexpr uint8_t kMagic[8] = {'K', 'V', 'A', 'N', 'T', 0x00, '\r', '\n'};
inline constexpr uint32_t kVersionMajor = 1;  // a reader rejects any other major version
inline constexpr uint32_t kVersionMinor = 0;  // minor bumps only add optional metadata keys
inline constexpr uint64_t kPreambleSize = 64;

// Offsets of the preamble fields.
inline constexpr uint64_t kOffMagic = 0;
inline constexpr uint64_t kOffVersionMajor = 8;
inline constexpr uint64_t kOffVersionMinor = 12;
inline constexpr uint64_t kOffHeaderSize = 16;
inline constexpr uint64_t kOffHeaderChecksum = 24;
inline constexpr uint64_t kOffDataOffset = 32;
inline constexpr uint64_t kOffDataSize = 40;
inline constexpr uint64_t kOffAlignment = 48;
inline constexpr uint64_t kOffFlags = 52;
inline constexpr uint64_t kOffPreambleChecksum = 56;

// Bounds a reader enforces.
inline constexpr uint64_t kMaxHeaderSize = 1ull << 30;  // 1 GiB
inline constexpr uint32_t kMinAlignment = 64;
inline constexpr uint32_t kMaxAlignment = 1u << 16;
inline constexpr uint32_t kDefaultAlignment = 64;
inline constexpr uint32_t kMaxDims = 4;
inline constexpr uint32_t kMaxKeyLength = 256;
inline constexpr uint32_t kMaxNameLength = 512;
inline constexpr uint64_t kMaxDimension = 1ull << 40;

}  // namespace kvant::spec
