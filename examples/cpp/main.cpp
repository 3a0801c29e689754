// Caffe's SoftmaxWithLoss (loss and diff) and PyTorch's cross_entropy through the installed
// xentkit library, checked against a direct evaluation of their formulas. Exits 1 on a mismatch.
#include <xentkit/xentkit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

bool close(double got, double want, double tol = 1e-12) {
  return std::abs(got - want) <= tol * std::max(1.0, std::abs(want));
}

// log softmax(x)[c] for the scores of one position: x[c*stride], c in [0, C).
double log_prob(const double* x, int64_t channels, int64_t stride, int64_t c) {
  double m = x[0];
  for (int64_t k = 1; k < channels; ++k) m = std::max(m, x[k * stride]);
  double s = 0.0;
  for (int64_t k = 0; k < channels; ++k) s += std::exp(x[k * stride] - m);
  return x[c * stride] - m - std::log(s);
}

}  // namespace

int main() {
  std::printf("xentkit %s\n", xentkit::version_string);
  // Scores (N, C, H, W) = (3, 4, 2, 2) with labels (N, H, W); label 255 is ignored.
  const int64_t N = 3, C = 4, inner = 4;
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::uniform_int_distribution<int> cls(0, static_cast<int>(C) - 1);
  std::vector<double> scores(N * C * inner);
  for (double& v : scores) v = normal(rng);
  std::vector<int32_t> labels(N * inner);
  for (int32_t& v : labels) v = cls(rng);
  labels[1] = 255;
  labels[6] = 255;

  bool ok = true;

  // --- SoftmaxWithLoss, normalization VALID (the default), loss_weight 2 ---
  xentkit::SoftmaxWithLossOptions opt;
  opt.ignore_label = 255;
  opt.loss_weight = 2.0;
  std::vector<double> diff(scores.size());
  const double loss = xentkit::softmax_with_loss<double, int32_t>(
      scores.data(), labels.data(), N, C, inner, diff.data(), /*prob=*/nullptr, opt);

  double want = 0.0;
  int64_t valid = 0;
  std::vector<double> want_diff(scores.size(), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < inner; ++i) {
      const int32_t y = labels[n * inner + i];
      if (y == 255) continue;
      const double* x = &scores[n * C * inner + i];
      want -= log_prob(x, C, inner, y);
      ++valid;
      for (int64_t c = 0; c < C; ++c) {
        want_diff[n * C * inner + c * inner + i] = std::exp(log_prob(x, C, inner, c)) - (c == y);
      }
    }
  }
  want /= static_cast<double>(valid);
  double worst = 0.0;
  for (size_t k = 0; k < diff.size(); ++k) {
    worst = std::max(worst, std::abs(diff[k] - 2.0 * want_diff[k] / static_cast<double>(valid)));
  }
  std::printf("softmax_with_loss: loss %.12f (formula %.12f), %lld valid positions, "
              "max |diff - formula| %.2e\n", loss, want, static_cast<long long>(valid), worst);
  ok = ok && close(loss, want) && worst < 1e-12;

  // --- PyTorch cross_entropy on (N, C) logits with class weights, reduction mean ---
  const int64_t rows = 5;
  std::vector<float> logits(rows * C);
  for (float& v : logits) v = static_cast<float>(normal(rng));
  std::vector<int64_t> target(rows);
  for (int64_t& v : target) v = cls(rng);
  const std::vector<float> weight = {0.5f, 1.0f, 1.5f, 2.0f};
  std::vector<float> grad(logits.size());
  xentkit::CrossEntropyOptions ce;  // reduction mean, ignore_index -100
  const float mean = xentkit::cross_entropy<float, int64_t>(
      logits.data(), target.data(), rows, C, /*inner=*/1, weight.data(), /*loss=*/nullptr,
      grad.data(), ce);

  std::vector<double> x64(logits.begin(), logits.end());
  double num = 0.0, den = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    num -= weight[target[r]] * log_prob(&x64[r * C], C, 1, target[r]);
    den += weight[target[r]];
  }
  std::printf("cross_entropy: loss %.7f (formula %.7f)\n", mean, num / den);
  ok = ok && close(mean, num / den, 1e-6);

  // Errors are exceptions derived from std::invalid_argument.
  target[2] = 7;
  try {
    xentkit::cross_entropy<float, int64_t>(logits.data(), target.data(), rows, C, 1, nullptr,
                                           nullptr, nullptr, ce);
    std::printf("an out-of-range class index was not reported\n");
    ok = false;
  } catch (const xentkit::label_error& e) {
    std::printf("out-of-range class index: %s\n", e.what());
  }

  std::printf(ok ? "all checks passed\n" : "CHECK FAILED\n");
  return ok ? 0 : 1;
}
