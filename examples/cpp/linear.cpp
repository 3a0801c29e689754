// A classifier head's loss without the N x V logits: the fused linear cross-entropy loop an
// embedder drives with its own matrix products (xentkit/linear.hpp). Per chunk of rows: logits
// from the caller's GEMM, xentkit's chunk primitive (losses, and the gradient in place), then the
// caller's GEMMs for grad_input and grad_W. Checked against a direct evaluation over the whole
// logits; exits 1 on a mismatch.
#include <xentkit/xentkit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#ifdef XENTKIT_EXAMPLE_BLAS
// The reference BLAS interface (Fortran symbols, column-major): OpenBLAS, MKL, BLIS, ...
extern "C" void dgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const double* alpha, const double* a, const int* lda,
                       const double* b, const int* ldb, const double* beta, double* c,
                       const int* ldc);
#endif

namespace {

// C (m x n, row-major) = beta * C + A' B' with A' = A or A^T (m x k), B' = B or B^T (k x n).
// With a BLAS this is one dgemm (row-major C is column-major C^T = B'^T A'^T); without one
// (configure found none) the loop below stands in for the caller's own product.
void gemm(bool ta, bool tb, int m, int n, int k, const double* a, const double* b, double beta,
          double* c) {
#ifdef XENTKIT_EXAMPLE_BLAS
  const double one = 1.0;
  const int lda = ta ? m : k, ldb = tb ? k : n;
  dgemm_(tb ? "T" : "N", ta ? "T" : "N", &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &n);
#else
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double s = 0.0;
      for (int p = 0; p < k; ++p) s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
      c[i * n + j] = beta * c[i * n + j] + s;
    }
  }
#endif
}

bool close(double got, double want, double tol = 1e-12) {
  return std::abs(got - want) <= tol * std::max(1.0, std::abs(want));
}

}  // namespace

int main() {
  const int N = 37, D = 8, V = 29, rows = 8;  // 5 chunks, the last one short
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> cls(0, V - 1);
  std::vector<double> input(N * D), W(V * D), bias(V);
  for (double& v : input) v = normal(rng);
  for (double& v : W) v = 0.5 * normal(rng);
  for (double& v : bias) v = normal(rng);
  std::vector<int64_t> target(N);
  for (int64_t& t : target) t = cls(rng);
  target[3] = target[20] = -100;  // ignored

  xentkit::CrossEntropyOptions options;  // mean over the non-ignored rows
  options.label_smoothing = 0.1;
  options.z_loss = 1e-3;
  // Every target is checked here, before any product: a bad one throws label_error.
  const xentkit::LinearCrossEntropyPlan plan =
      xentkit::plan_linear_cross_entropy<double>(target.data(), N, V, nullptr, options);

  std::vector<double> logits(rows * V), grad_input(N * D), grad_W(V * D, 0.0), grad_b(V, 0.0);
  double sum = 0.0;
  for (int r = 0; r < N; r += rows) {
    const int n = std::min(rows, N - r);
    for (int i = 0; i < n; ++i) std::copy(bias.begin(), bias.end(), logits.begin() + i * V);
    gemm(false, true, n, V, D, &input[r * D], W.data(), 1.0, logits.data());  // + x W^T
    sum += xentkit::linear_cross_entropy_chunk(plan, logits.data(), &target[r], n,
                                               static_cast<const double*>(nullptr),
                                               static_cast<double*>(nullptr), true);
    // logits now hold d(loss)/d(logits) of these rows.
    gemm(false, false, n, D, V, logits.data(), W.data(), 0.0, &grad_input[r * D]);
    gemm(true, false, V, D, n, logits.data(), &input[r * D], 1.0, grad_W.data());
    for (int i = 0; i < n; ++i) {
      for (int c = 0; c < V; ++c) grad_b[c] += logits[i * V + c];
    }
  }
  const double loss = xentkit::linear_cross_entropy_result(plan, sum);

  // The direct evaluation: all N x V logits, the formulas of cross_entropy with smoothing and
  // z-loss, and the gradients they imply.
  std::vector<double> full(N * V), dfull(N * V, 0.0);
  double want = 0.0;
  int valid = 0;
  for (int i = 0; i < N; ++i) {
    if (target[i] != -100) ++valid;
  }
  const double eps = options.label_smoothing, z = options.z_loss;
  for (int i = 0; i < N; ++i) {
    double m = -INFINITY;
    for (int c = 0; c < V; ++c) {
      double s = bias[c];
      for (int k = 0; k < D; ++k) s += input[i * D + k] * W[c * D + k];
      full[i * V + c] = s;
      m = std::max(m, s);
    }
    if (target[i] == -100) continue;
    double e = 0.0;
    for (int c = 0; c < V; ++c) e += std::exp(full[i * V + c] - m);
    const double lse = m + std::log(e);
    double l = (1 - eps) * (lse - full[i * V + target[i]]) + z * lse * lse;
    for (int c = 0; c < V; ++c) l += eps / V * (lse - full[i * V + c]);
    want += l / valid;
    for (int c = 0; c < V; ++c) {
      const double p = std::exp(full[i * V + c] - lse);
      dfull[i * V + c] = (p * (1 + 2 * z * lse) - (1 - eps) * (c == target[i]) - eps / V) / valid;
    }
  }
  bool ok = close(loss, want);
  for (int i = 0; i < N; ++i) {
    for (int k = 0; k < D; ++k) {
      double g = 0.0;
      for (int c = 0; c < V; ++c) g += dfull[i * V + c] * W[c * D + k];
      ok = ok && close(grad_input[i * D + k], g);
    }
  }
  for (int c = 0; c < V; ++c) {
    double gb = 0.0;
    for (int i = 0; i < N; ++i) gb += dfull[i * V + c];
    ok = ok && close(grad_b[c], gb);
    for (int k = 0; k < D; ++k) {
      double g = 0.0;
      for (int i = 0; i < N; ++i) g += dfull[i * V + c] * input[i * D + k];
      ok = ok && close(grad_W[c * D + k], g);
    }
  }
  std::printf("linear cross entropy over %d chunks of %d rows: loss %.12f (direct %.12f)\n",
              (N + rows - 1) / rows, rows, loss, want);
  if (!ok) {
    std::printf("MISMATCH\n");
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
