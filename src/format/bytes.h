// Little-endian byte cursors with bounds checks, for the format parsers and
// encoders. A Reader never reads past its span; it reports the first overrun
// and stays failed, so a parser can read a whole structure and check once.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace tensorizer::internal {

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool ok() const { return ok_; }
  size_t pos() const { return pos_; }
  size_t remaining() const { return ok_ ? size_ - pos_ : 0; }

  template <typename T>
  T Read() {
    T v{};
    if (!Need(sizeof(T))) return v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // host is little-endian (checked in CMake)
    pos_ += sizeof(T);
    return v;
  }
  std::string ReadString(size_t n) {
    if (!Need(n)) return {};
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  void Skip(size_t n) {
    if (Need(n)) pos_ += n;
  }

 private:
  bool Need(size_t n) {
    if (!ok_ || n > size_ - pos_) {
      ok_ = false;
      return false;
    }
    return true;
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  bool ok_ = true;
};

class ByteWriter {
 public:
  template <typename T>
  void Write(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void WriteBytes(std::string_view s) { out_.append(s); }
  size_t size() const { return out_.size(); }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

}  // namespace tensorizer::internal
