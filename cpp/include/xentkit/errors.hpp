#pragma once
// The exception hierarchy of xentkit. Every error derives from std::invalid_argument, so an
// embedder can catch them all in one place; the Python bindings map each class to its Python
// counterpart (value_error -> ValueError, type_error -> TypeError, label_error -> LabelError).

#include <cstdint>
#include <stdexcept>
#include <string>

namespace xentkit {

/// Base of all xentkit errors.
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A shape, count, option or output buffer that does not fit the call.
class value_error : public error {
 public:
  using error::error;
};

/// An unsupported element type.
class type_error : public error {
 public:
  using error::error;
};

/// A label that is neither a class index in [0, C) nor the ignored label. Carries the label as
/// it was stored (its text, and its value as a double) and its flat index in the label array.
class label_error : public value_error {
 public:
  label_error(const std::string& message, std::string value_text, double value, int64_t index)
      : value_error(message), value_text_(std::move(value_text)), value_(value), index_(index) {}
  const std::string& value_text() const noexcept { return value_text_; }
  double value() const noexcept { return value_; }
  int64_t index() const noexcept { return index_; }

 private:
  std::string value_text_;
  double value_;
  int64_t index_;
};

/// A CUDA entry point called in a build without CUDA, or with no usable device.
class unavailable_error : public error {
 public:
  using error::error;
};

}  // namespace xentkit
