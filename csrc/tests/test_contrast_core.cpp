// Unit tests of the torch-free core: the fused forward/backward against a materialised
// double-precision transcription of the definitions, finite differences, and determinism.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/contrast.h"

namespace {

int failures = 0;

void expect_close(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.10g want %.10g\n", what, got, want);
    ++failures;
  }
}

struct Problem {
  int64_t M, N, E;
  std::vector<double> A, B, r, c;
  std::vector<int64_t> la, lb;
  double scale, bias;
  uca::Loss loss;
  bool exclude_self;
};

// Materialised losses (rows then columns), straight from the definitions.
void naive_losses(const Problem& p, std::vector<double>& rows, std::vector<double>& cols) {
  const int64_t M = p.M, N = p.N;
  std::vector<double> S(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double t = p.r[i] + p.c[j];
      for (int64_t k = 0; k < p.E; ++k) t += p.A[i * p.E + k] * p.B[j * p.E + k];
      S[i * N + j] = p.scale * t + p.bias;
    }
  if (p.loss == uca::Loss::SIGMOID) {  // l = log(1 + exp(-y S)), summed over rows and over columns
    rows.assign(M, 0.0);
    cols.assign(N, 0.0);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        if (p.exclude_self && i == j) continue;
        const double ys = (p.la[i] == p.lb[j] ? 1.0 : -1.0) * S[i * N + j];
        const double l = ys > 0 ? std::log1p(std::exp(-ys)) : -ys + std::log1p(std::exp(ys));
        rows[i] += l;
        cols[j] += l;
      }
    return;
  }
  auto one_side = [&](bool by_rows, std::vector<double>& out) {
    const int64_t R = by_rows ? M : N, C = by_rows ? N : M;
    out.assign(R, 0.0);
    for (int64_t a = 0; a < R; ++a) {
      double mx = -INFINITY;
      int npos = 0;
      for (int64_t b = 0; b < C; ++b) {
        const int64_t i = by_rows ? a : b, j = by_rows ? b : a;
        if (p.exclude_self && i == j) continue;
        mx = std::max(mx, S[i * N + j]);
        npos += p.la[i] == p.lb[j];
      }
      if (npos == 0) continue;
      double z = 0, zp = 0;
      for (int64_t b = 0; b < C; ++b) {
        const int64_t i = by_rows ? a : b, j = by_rows ? b : a;
        if (p.exclude_self && i == j) continue;
        const double e = std::exp(S[i * N + j] - mx);
        z += e;
        if (p.la[i] == p.lb[j]) zp += e;
      }
      if (p.loss == uca::Loss::INFONCE) {
        out[a] = std::log(z) - std::log(zp);
        continue;
      }
      double L = 0;
      for (int64_t b = 0; b < C; ++b) {
        const int64_t i = by_rows ? a : b, j = by_rows ? b : a;
        if (p.exclude_self && i == j) continue;
        const double logp = S[i * N + j] - mx - std::log(z);
        const double q = p.la[i] == p.lb[j] ? 1.0 / npos : 0.0;
        L += std::exp(logp) * (logp - std::log(q + uca::kSdmEps));
      }
      out[a] = L;
    }
  };
  one_side(true, rows);
  one_side(false, cols);
}

template <typename T>
uca::ContrastArgs<T> args_of(const Problem& p, std::vector<T>& A, std::vector<T>& B,
                             std::vector<T>& r, std::vector<T>& c) {
  A.assign(p.A.begin(), p.A.end());
  B.assign(p.B.begin(), p.B.end());
  r.assign(p.r.begin(), p.r.end());
  c.assign(p.c.begin(), p.c.end());
  uca::ContrastArgs<T> a;
  a.M = p.M, a.N = p.N, a.E = p.E;
  a.A = A.data(), a.B = B.data(), a.r = r.data(), a.c = c.data();
  a.scale = static_cast<T>(p.scale), a.bias = static_cast<T>(p.bias);
  a.labels_a = p.la.data(), a.labels_b = p.lb.data();
  a.loss = p.loss, a.exclude_self = p.exclude_self;
  return a;
}

Problem make_problem(int64_t M, int64_t N, int64_t E, int n_ids, uca::Loss loss, bool excl,
                     double scale, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> g;
  std::uniform_int_distribution<int> u(0, n_ids - 1);
  Problem p{M, N, E, {}, {}, {}, {}, {}, {}, scale, 0.25, loss, excl};
  for (int64_t k = 0; k < M * E; ++k) p.A.push_back(g(gen));
  for (int64_t k = 0; k < N * E; ++k) p.B.push_back(g(gen));
  for (int64_t k = 0; k < M; ++k) p.r.push_back(g(gen)), p.la.push_back(u(gen));
  for (int64_t k = 0; k < N; ++k) p.c.push_back(g(gen));
  for (int64_t k = 0; k < N; ++k)  // excl: row i is column i for i < min(M, N)
    p.lb.push_back(excl && k < M ? p.la[k] : u(gen));
  return p;
}

// Weighted total loss sum(gr * rows) + sum(gc * cols) from the naive implementation.
double naive_total(const Problem& p, const std::vector<double>& gr, const std::vector<double>& gc) {
  std::vector<double> rows, cols;
  naive_losses(p, rows, cols);
  double s = 0;
  for (size_t k = 0; k < rows.size(); ++k) s += gr[k] * rows[k];
  for (size_t k = 0; k < cols.size(); ++k) s += gc[k] * cols[k];
  return s;
}

void check_problem(const char* name, Problem p, uca::Tiles tiles) {
  const int64_t M = p.M, N = p.N, E = p.E;
  std::vector<double> A, B, r, c;
  const auto a = args_of<double>(p, A, B, r, c);
  const uca::LoopGemm<double> gemm;
  std::vector<double> rows(M), cols(N), rs(M * uca::kStats), cs(N * uca::kStats);
  uca::contrast_forward<double>(a, gemm, tiles, rows.data(), cols.data(), rs.data(), cs.data());
  std::vector<double> want_rows, want_cols;
  naive_losses(p, want_rows, want_cols);
  for (int64_t i = 0; i < M; ++i) expect_close(name, rows[i], want_rows[i], 1e-10);
  for (int64_t j = 0; j < N; ++j) expect_close(name, cols[j], want_cols[j], 1e-10);

  // Backward against central finite differences of the naive total.
  std::mt19937 gen(7);
  std::normal_distribution<double> g;
  std::vector<double> gr(M), gc(N);
  for (auto& x : gr) x = g(gen);
  for (auto& x : gc) x = g(gen);
  std::vector<double> dA(M * E), dB(N * E), dr(M), dc(N);
  double dscale, dbias;
  uca::contrast_backward<double>(a, gemm, tiles, gr.data(), gc.data(), rows.data(), cols.data(),
                                 rs.data(), cs.data(), dA.data(), dB.data(), dr.data(), dc.data(),
                                 &dscale, &dbias);
  const double h = 1e-6;
  auto fd = [&](double& x) {
    const double x0 = x;
    x = x0 + h;
    const double up = naive_total(p, gr, gc);
    x = x0 - h;
    const double dn = naive_total(p, gr, gc);
    x = x0;
    return (up - dn) / (2 * h);
  };
  expect_close("dA[0]", dA[0], fd(p.A[0]), 1e-5);
  expect_close("dA[last]", dA[M * E - 1], fd(p.A[M * E - 1]), 1e-5);
  expect_close("dB[1]", dB[1 % (N * E)], fd(p.B[1 % (N * E)]), 1e-5);
  expect_close("dr[0]", dr[0], fd(p.r[0]), 1e-5);
  expect_close("dc[last]", dc[N - 1], fd(p.c[N - 1]), 1e-5);
  expect_close("dscale", dscale, fd(p.scale), 1e-5);
  expect_close("dbias", dbias, fd(p.bias), 1e-5);

  // The one-sweep scalar sigmoid: its total is the rows' sum and its gradients the backward's
  // with grad_rows = 1, grad_cols = 0.
  if (p.loss == uca::Loss::SIGMOID) {
    std::vector<double> ones(M, 1.0), zeros(N, 0.0), dA1(M * E), dB1(N * E), dr1(M), dc1(N);
    std::vector<double> dA2(M * E), dB2(N * E), dr2(M), dc2(N);
    double ds1, db1, ds2, db2, total = 0, want_total = 0;
    uca::contrast_backward<double>(a, gemm, tiles, ones.data(), zeros.data(), rows.data(), cols.data(),
                                   rs.data(), cs.data(), dA1.data(), dB1.data(), dr1.data(), dc1.data(),
                                   &ds1, &db1);
    uca::sigmoid_loss_and_grads<double>(a, gemm, tiles, &total, dA2.data(), dB2.data(), dr2.data(),
                                        dc2.data(), &ds2, &db2);
    for (double x : want_rows) want_total += x;
    expect_close("sigmoid total", total, want_total, 1e-10);
    for (int64_t k = 0; k < M * E; ++k) expect_close("sigmoid dA", dA2[k], dA1[k], 1e-10);
    for (int64_t k = 0; k < N * E; ++k) expect_close("sigmoid dB", dB2[k], dB1[k], 1e-10);
    for (int64_t k = 0; k < M; ++k) expect_close("sigmoid dr", dr2[k], dr1[k], 1e-10);
    for (int64_t k = 0; k < N; ++k) expect_close("sigmoid dc", dc2[k], dc1[k], 1e-10);
    expect_close("sigmoid dscale", ds2, ds1, 1e-10);
    expect_close("sigmoid dbias", db2, db1, 1e-10);
  }

  // float32 forward agrees with double to float precision and is bit-identical on a rerun.
  std::vector<float> Af, Bf, rf, cf;
  const auto af = args_of<float>(p, Af, Bf, rf, cf);
  const uca::LoopGemm<float> gemm_f;
  std::vector<float> rows1(M), cols1(N), rows2(M), cols2(N);
  std::vector<double> rs1(M * uca::kStats), cs1(N * uca::kStats), rs2(M * uca::kStats), cs2(N * uca::kStats);
  uca::contrast_forward<float>(af, gemm_f, tiles, rows1.data(), cols1.data(), rs1.data(), cs1.data());
  uca::contrast_forward<float>(af, gemm_f, tiles, rows2.data(), cols2.data(), rs2.data(), cs2.data());
  for (int64_t i = 0; i < M; ++i) expect_close("float32 rows", rows1[i], want_rows[i], 2e-4);
  if (std::memcmp(rows1.data(), rows2.data(), M * sizeof(float)) != 0 ||
      std::memcmp(cols1.data(), cols2.data(), N * sizeof(float)) != 0) {
    std::printf("FAIL %s: float32 reruns differ\n", name);
    ++failures;
  }
}

// float32 logits exact around a large offset (features in {-1, -1/2, 0, 1/2, 1}, r and c multiples
// of 1/4, scale 2): the float32 backward must match the double one to float32 precision. The float64
// statistics make it so; rounded to float32 at |S| ~ 1e5 the LSE would shift every p by up to 4e-3.
void check_offset_logits(uca::Loss loss, double bias, uca::Tiles tiles) {
  const int64_t M = 40, N = 33, E = 16;
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> half(-2, 2), quarter(-8, 8), id(0, 9);
  Problem p{M, N, E, {}, {}, {}, {}, {}, {}, 2.0, bias, loss, false};
  for (int64_t k = 0; k < M * E; ++k) p.A.push_back(half(gen) / 2.0);
  for (int64_t k = 0; k < N * E; ++k) p.B.push_back(half(gen) / 2.0);
  for (int64_t k = 0; k < M; ++k) p.r.push_back(quarter(gen) / 4.0), p.la.push_back(id(gen));
  for (int64_t k = 0; k < N; ++k) p.c.push_back(quarter(gen) / 4.0), p.lb.push_back(id(gen));
  std::vector<double> gr(M), gc(N);
  for (auto& x : gr) x = quarter(gen) / 8.0;
  for (auto& x : gc) x = quarter(gen) / 8.0;
  auto grad_A = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> A, B, r, c, rows(M), cols(N), dA(M * E), dB(N * E), dr(M), dc(N);
    std::vector<T> g_rows(gr.begin(), gr.end()), g_cols(gc.begin(), gc.end());
    std::vector<double> rs(M * uca::kStats), cs(N * uca::kStats);
    T dscale, dbias;
    const auto a = args_of<T>(p, A, B, r, c);
    const uca::LoopGemm<T> gemm;
    uca::contrast_forward<T>(a, gemm, tiles, rows.data(), cols.data(), rs.data(), cs.data());
    uca::contrast_backward<T>(a, gemm, tiles, g_rows.data(), g_cols.data(), rows.data(), cols.data(), rs.data(),
                              cs.data(), dA.data(), dB.data(), dr.data(), dc.data(), &dscale, &dbias);
    return std::vector<double>(dA.begin(), dA.end());
  };
  const auto want = grad_A(0.0), got = grad_A(0.0f);
  double peak = 0, err = 0;
  for (size_t k = 0; k < want.size(); ++k) {
    peak = std::max(peak, std::fabs(want[k]));
    err = std::max(err, std::fabs(got[k] - want[k]));
  }
  if (!(err <= 5e-5 * peak)) {
    std::printf("FAIL offset logits (%s, bias %g): float32 dA off by %.3g of its peak\n",
                loss == uca::Loss::SDM ? "sdm" : "infonce", bias, err / peak);
    ++failures;
  }
}

}  // namespace

int main() {
  const uca::Tiles small{5, 7}, big{256, 2048};
  int cases = 0;
  for (auto loss : {uca::Loss::SDM, uca::Loss::INFONCE, uca::Loss::SIGMOID})
    for (bool excl : {false, true})
      for (auto tiles : {small, big}) {
        const int64_t M = 13, N = excl ? 13 : 11;
        check_problem("random", make_problem(M, N, 6, 4, loss, excl, -0.8, 1 + cases), tiles);
        check_problem("one id", make_problem(M, N, 3, 1, loss, excl, 1.3, 50 + cases), tiles);
        check_problem("unique", make_problem(M, N, 4, 1000, loss, excl, 0.5, 90 + cases), tiles);
        check_problem("1x1", make_problem(1, 1, 2, 1, loss, false, 2.0, 7 + cases), tiles);
        if (excl) {  // local rows against columns that start with them, and the transpose
          check_problem("excl M<N", make_problem(9, 23, 5, 3, loss, true, -0.7, 200 + cases), tiles);
          check_problem("excl M>N", make_problem(23, 9, 5, 3, loss, true, -0.7, 240 + cases), tiles);
        }
        // Logits spread over hundreds: positives far below the max take the exact paths.
        check_problem("wide", make_problem(M, N, 3, 4, loss, excl, -40.0, 120 + cases), tiles);
        if (loss == uca::Loss::SIGMOID)  // logits ~ +-1e3: softplus / sigma stay finite and exact
          check_problem("huge", make_problem(M, N, 3, 4, loss, excl, 400.0, 160 + cases), tiles);
        ++cases;
      }
  for (auto loss : {uca::Loss::SDM, uca::Loss::INFONCE})
    for (double bias : {1e5, -1e5})
      for (auto tiles : {small, big}) check_offset_logits(loss, bias, tiles), ++cases;
  std::printf("%d configurations, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
