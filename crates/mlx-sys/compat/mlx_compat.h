/* Force-included (-include) into every mlx-c translation unit and into bindgen's parse.
 * It fills two gaps of GCC 12 / x86_64 and closes a format-string hole, without touching the
 * vendored mlx-c sources. */
#ifndef SD3LAB_MLX_COMPAT_H
#define SD3LAB_MLX_COMPAT_H

/* 1. float16/bfloat16 outside Arm: mlx-c's half.h only defines them on aarch64, but
 *    mlx-rs needs mlx_array_item_float16 & co. Use 16-bit storage types: the values
 *    only travel through pointers, bit for bit. */
#if !defined(__aarch64__) && !defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC)
#include <stdint.h>
#ifndef HAS_FLOAT16
#define HAS_FLOAT16
typedef uint16_t float16_t;
#endif
#ifndef HAS_BFLOAT16
#define HAS_BFLOAT16
typedef uint16_t bfloat16_t;
#endif
#endif

/* 2. std::format: libstdc++ 12 lacks it (added in 13); mlx-c uses it with plain "{}"
 *    placeholders only. This minimal version substitutes each "{}" in order. */
#ifdef __cplusplus
#include <version>
#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace std {
namespace sd3lab_compat {
inline void format_rest(std::ostringstream& out, std::string_view fmt) { out << fmt; }
template <typename T, typename... Rest>
void format_rest(std::ostringstream& out, std::string_view fmt, T&& first, Rest&&... rest) {
  auto at = fmt.find("{}");
  if (at == std::string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, at) << first;
  format_rest(out, fmt.substr(at + 2), std::forward<Rest>(rest)...);
}
} // namespace sd3lab_compat
template <typename... Args>
std::string format(std::string_view fmt, Args&&... args) {
  std::ostringstream out;
  sd3lab_compat::format_rest(out, fmt, std::forward<Args>(args)...);
  return out.str();
}
} // namespace std
#endif
#endif

/* 3. mlx-c reports every C++ exception with mlx_error(e.what()): the message becomes a printf
 *    format, and MLX builds messages from file contents (a safetensors dtype such as
 *    "%s%n" gave a segmentation fault; found by fuzzing, see docs/FUZZING.md). Every one of
 *    mlx-c's calls passes a single string, so pass it through "%s". */
#include "../vendor/mlx-c/mlx/c/error.h"
#undef mlx_error
#define mlx_error(...) _mlx_error(__FILE__, __LINE__, "%s", __VA_ARGS__)

#endif
