#include <cctype>
#include <string>

#include "xentkit/errors.hpp"
#include "xentkit/options.hpp"

namespace xentkit {

Normalization parse_normalization(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "full") return Normalization::full;
  if (lower == "valid") return Normalization::valid;
  if (lower == "batch_size") return Normalization::batch_size;
  if (lower == "none") return Normalization::none;
  throw value_error("normalization: expected one of 'full', 'valid', 'batch_size', 'none', got '" +
                    std::string(name) + "'");
}

const char* normalization_name(Normalization mode) noexcept {
  switch (mode) {
    case Normalization::full: return "full";
    case Normalization::valid: return "valid";
    case Normalization::batch_size: return "batch_size";
    case Normalization::none: return "none";
  }
  return "unknown";
}

Reduction parse_reduction(std::string_view name) {
  if (name == "none") return Reduction::none;
  if (name == "mean") return Reduction::mean;
  if (name == "sum") return Reduction::sum;
  throw value_error("reduction: expected one of 'none', 'mean', 'sum', got '" + std::string(name) +
                    "'");
}

const char* reduction_name(Reduction reduction) noexcept {
  switch (reduction) {
    case Reduction::none: return "none";
    case Reduction::mean: return "mean";
    case Reduction::sum: return "sum";
  }
  return "unknown";
}

}  // namespace xentkit
