// The fuzz targets' "amplified" inputs: a short input that stands for a long
// repetitive text, so that the fuzzer reaches the sizes and nesting depths
// (thousands of levels) that its few-KiB inputs cannot.
//
//   0x01 <count: 2 bytes, little endian> prefix 0x00 unit 0x00 suffix
//     -> prefix + unit * count + suffix, with as many whole units as fit in
//        `cap` bytes; with count 0xffff, the unit repeated until the text is
//        longer than `beyond` instead
//
// e.g. "\x01\x10\x27SELECT 1\x00+(1)\x00" is "SELECT 1" and 10,000 "+(1)".
// Any other input is the text itself.

#ifndef SHARDKIT_TESTS_FUZZ_AMPLIFIED_INPUT_H_
#define SHARDKIT_TESTS_FUZZ_AMPLIFIED_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace shardkit::fuzz {

inline std::string AmplifiedInput(const uint8_t* data, size_t size, size_t cap,
                                  size_t beyond) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  if (in.size() < 3 || in[0] != '\x01') return std::string(in);
  const size_t count = static_cast<uint8_t>(in[1]) |
                       (size_t{static_cast<uint8_t>(in[2])} << 8);
  const std::string_view rest = in.substr(3);
  const size_t a = rest.find('\0');
  const size_t b = a == std::string_view::npos ? a : rest.find('\0', a + 1);
  if (b == std::string_view::npos) return std::string(rest);
  const std::string_view prefix = rest.substr(0, a);
  const std::string_view unit = rest.substr(a + 1, b - a - 1);
  const std::string_view suffix = rest.substr(b + 1);
  std::string text(prefix);
  if (count == 0xffff) {
    while (!unit.empty() && text.size() <= beyond) text.append(unit);
  } else {
    // Whole units only: a cut one would most often be a syntax error.
    for (size_t i = 0; i < count && !unit.empty() &&
                       text.size() + unit.size() + suffix.size() <= cap;
         ++i) {
      text.append(unit);
    }
  }
  text.append(suffix);
  return text;
}

}  // namespace shardkit::fuzz

#endif  // SHARDKIT_TESTS_FUZZ_AMPLIFIED_INPUT_H_
