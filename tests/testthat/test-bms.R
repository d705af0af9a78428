# Random-effects BMS: references are SPM12's spm_BMS output (published in the
# issue), closed forms, and fixed-point equations recomputed here.

spm_unit <- matrix(rep(c(-10.3, -9.7), each = 5), 5, 2)

# One VB sweep written out independently: alpha0 + sum_n softmax(L_n + E log r).
fixed_point_map <- function(L, a, a0) {
  E <- digamma(a) - digamma(sum(a))
  g <- t(apply(L, 1, function(l) { u <- exp(l + E - max(l + E)); u / sum(u) }))
  a0 + colSums(g)
}

test_that("SPM's unit case is reproduced with SPM's stopping rule", {
  b <- bms(spm_unit, tol = 1e-3)  # spm_BMS stops when |alpha change| < 1e-3
  expect_equal(unname(b$alpha), c(1.522114, 5.477886), tolerance = 1e-6)
  expect_equal(unname(b$expected_frequency), c(0.217445, 0.782555), tolerance = 1e-6)
  expect_equal(unname(b$exceedance), c(0.049320, 0.950680), tolerance = 1e-5)
  expect_equal(b$omnibus_risk, 0.534512, tolerance = 1e-6)
  # (SPM's figures are at its looser tol = 1e-3: they agree to 4 digits)
  expect_equal(unname(b$protected_exceedance), c(0.290214, 0.709786), tolerance = 2e-4)
  # fixed effects: group log Bayes factor 5 * 0.6 = 3, posterior 1 / (1 + e^-3)
  expect_equal(b$ffx_log_bf[2, 1], 3, tolerance = 1e-12)
  expect_equal(unname(b$ffx_posterior[2]), 0.9526, tolerance = 1e-4)
  expect_equal(unname(b$ffx_posterior[2]), 1 / (1 + exp(-3)), tolerance = 1e-12)
})

test_that("at the default tolerance alpha is the exact VB fixed point", {
  b <- bms(spm_unit)
  expect_true(b$converged)
  expect_equal(unname(b$alpha), fixed_point_map(spm_unit, unname(b$alpha), c(1, 1)), tolerance = 1e-9)
  # the same fixed point by root finding in alpha_1 (alpha_2 = 7 - alpha_1)
  r <- uniroot(function(a1) fixed_point_map(spm_unit, c(a1, 7 - a1), c(1, 1))[1] - a1,
               c(1, 6), tol = 1e-12)$root
  expect_equal(unname(b$alpha[1]), r, tolerance = 1e-8)
  # exceedance for two models is the beta tail P(r_2 > 1/2)
  expect_equal(unname(b$exceedance[2]), pbeta(0.5, r, 7 - r, lower.tail = TRUE), tolerance = 1e-10)
  # SPM's BOR is insensitive to its looser stopping rule at 6 digits
  expect_equal(b$omnibus_risk, 0.534512, tolerance = 1e-6)
  # (SPM's figures are at its looser tol = 1e-3: they agree to 4 digits)
  expect_equal(unname(b$protected_exceedance), c(0.290214, 0.709786), tolerance = 2e-4)
})

test_that("equal evidences give alpha = alpha0 + N/K and SPM's omnibus risk", {
  b <- bms(matrix(-10, 5, 2))
  expect_equal(unname(b$alpha), c(3.5, 3.5), tolerance = 1e-12)
  expect_equal(b$omnibus_risk, 0.670748, tolerance = 1e-6)
  expect_equal(unname(b$exceedance), c(0.5, 0.5), tolerance = 1e-12)
  # F0 = sum_n (logsumexp - log K) = 5 * (-10)
  expect_equal(b$null_free_energy, -50, tolerance = 1e-12)
})

test_that("the three-subject case matches spm_BMS", {
  L <- rbind(c(0, -5), c(0, -5), c(-5, 0))
  b <- bms(L, tol = 1e-3)
  expect_equal(unname(b$alpha), c(3.0029, 1.9971), tolerance = 1e-4)
  expect_equal(unname(b$exceedance), c(0.688513, 0.311487), tolerance = 1e-6)
  expect_equal(b$omnibus_risk, 0.600225, tolerance = 1e-6)
  bx <- bms(L)
  expect_equal(unname(bx$alpha), fixed_point_map(L, unname(bx$alpha), c(1, 1)), tolerance = 1e-9)
  expect_equal(unname(bx$exceedance), c(0.688513, 0.311487), tolerance = 3e-6)
  expect_equal(bx$omnibus_risk, 0.600225, tolerance = 1e-6)
})

# Exceedance for integer alphas in closed form: the Gamma(a) cdf is the Erlang
# sum 1 - e^-q sum_{m<a} q^m/m!, so xp_k = int q^(a_k-1) e^-q / (a_k-1)!
# prod_i (1 - e^-q poly_i(q)) dq expands into terms c q^n e^-(j q) with
# integrals c n! / j^(n+1).
erlang_exceedance <- function(a) {
  K <- length(a)
  sapply(seq_len(K), function(k) {
    # polynomial in q (coefficients by power) for each exponential rate j
    terms <- list(list(rate = 1, poly = c(rep(0, a[k] - 1), 1 / factorial(a[k] - 1))))
    for (i in seq_len(K)[-k]) {
      pi_ <- 1 / factorial(0:(a[i] - 1))
      new <- list()
      for (t in terms) {
        new[[length(new) + 1]] <- t
        prod <- -convolve(t$poly, rev(pi_), type = "open")
        new[[length(new) + 1]] <- list(rate = t$rate + 1, poly = prod)
      }
      terms <- new
    }
    sum(vapply(terms, function(t) {
      n <- seq_along(t$poly) - 1
      sum(t$poly * factorial(n) / t$rate^(n + 1))
    }, 0))
  })
}

test_that("for decisively attributed subjects F1 and the omnibus risk are exact", {
  # each subject's evidence singles out one model, so q(m) is exact and q(r) the
  # exact Dirichlet posterior: F1 = log Dirichlet-multinomial evidence
  L <- cbind(c(rep(0, 10), rep(-200, 6)), c(rep(-200, 10), rep(0, 6)))
  b <- bms(L)
  expect_equal(b$free_energy, lbeta(11, 7), tolerance = 1e-10)
  # BOR = P(equal frequencies | attributions): the binomial test of r = 1/2
  # against a uniform prior on r, with even prior odds
  expect_equal(b$omnibus_risk, 1 / (1 + exp(lbeta(11, 7) - 16 * log(0.5))), tolerance = 1e-10)
  L3 <- cbind(L, -200)
  a0 <- c(2, 0.5, 1.5)
  b3 <- bms(L3, alpha0 = a0)
  n <- c(10, 6, 0)
  ldm <- lgamma(sum(a0)) - lgamma(sum(a0) + 16) + sum(lgamma(a0 + n) - lgamma(a0))
  expect_equal(b3$free_energy, ldm, tolerance = 1e-10)
  expect_equal(unname(b3$alpha), a0 + n, tolerance = 1e-10)
})

# The textbook free energy, E_q log p(L, m, r) - E_q log q(m, r) term by
# term (Stephan et al. 2009): accurate while alpha0 is moderate.
textbook_F1 <- function(L, G, a0) {
  a <- a0 + colSums(G)
  E <- digamma(a) - digamma(sum(a))
  elj <- lgamma(sum(a0)) - sum(lgamma(a0)) + sum((a0 - 1) * E) + sum(G * sweep(L, 2, E, "+"))
  hr <- sum(lgamma(a)) - lgamma(sum(a)) - sum((a - 1) * E)
  elj + hr - sum(G * log(G))
}

test_that("the free energy agrees with the textbook form for moderate alpha0", {
  set.seed(12)
  L <- matrix(rnorm(30, -10, 1.5), 10, 3)
  # alpha0 on both sides of the switch to Stirling's series at 30
  for (a0 in list(c(1, 1, 1), c(0.2, 3, 0.7), rep(29.9, 3), rep(30, 3), rep(30.1, 3), c(40, 100, 1e3))) {
    b <- bms(L, alpha0 = a0)
    expect_equal(b$free_energy, textbook_F1(L, b$posterior, a0), tolerance = 1e-11)
  }
})

test_that("lgamma(x + n) - lgamma(x) - n log x is exact in both branches", {
  lge <- getFromNamespace("lgamma_excess", "vbayes")
  # lgamma(x + n) - lgamma(x) = sum_{j < n} log(x + j), so the excess is
  # sum_{j < n} log1p(j / x): a direct sum with no cancellation
  for (x in c(0.3, 7, 29.99, 30, 31, 1e3, 1e6, 1e12, 1e100)) for (n in c(0, 1, 3, 17, 250)) {
    ref <- sum(log1p(seq_len(n) / x - 1 / x))
    expect_lt(abs(lge(x, n) - ref), 1e-13 * max(1, abs(ref)), label = sprintf("x = %g, n = %d", x, n))
  }
})

test_that("the omnibus risk tends to 1/2 as alpha0 grows (no cancellation in F1)", {
  # r ~ Dir(alpha0) with alpha0 -> infinity puts all prior mass on equal
  # frequencies: the random-effects model becomes the null, F1 -> F0 and the
  # omnibus risk -> 1 / (1 + e^0) = 1/2.  The old textbook form gave 1e-5 at
  # alpha0 = 1e15 and 9e-24 at 1e100.
  F0 <- sum(apply(spm_unit, 1, function(l) max(l) + log(sum(exp(l - max(l)))))) - 5 * log(2)
  for (a0 in c(1e15, 1e50, 1e100, 1e300)) {
    b <- bms(spm_unit, alpha0 = a0)
    expect_equal(b$null_free_energy, F0, tolerance = 1e-12)
    expect_lt(abs(b$free_energy - F0), 1e-12)
    expect_lt(abs(b$omnibus_risk - 0.5), 1e-12)
    # the posterior counts differ by N = 5 at most, a shift of order
    # 5 / sqrt(alpha0) standard deviations of r
    expect_equal(unname(b$exceedance), c(0.5, 0.5), tolerance = 1e-6)
  }
  # three models: the exceedance integral too reaches the limit 1/3 each
  b3 <- bms(cbind(spm_unit, -11), alpha0 = 1e100)
  expect_equal(unname(b3$exceedance), rep(1 / 3, 3), tolerance = 1e-8)
  expect_lt(abs(b3$omnibus_risk - 0.5), 1e-12)
  # decisive attributions with a large but finite alpha0: F1 is the log
  # Dirichlet-multinomial normaliser, by a direct sum of log1p terms
  # (lgamma(a + n) - lgamma(a) = n log a + sum_{j < n} log1p(j / a))
  L <- cbind(c(rep(0, 10), rep(-200, 6)), c(rep(-200, 10), rep(0, 6)))
  for (a0 in c(1e3, 1e6, 1e10, 1e14)) {
    ex <- function(a, n) sum(log1p(seq_len(n) / a - 1 / a))
    ref <- -16 * log(2) + ex(a0, 10) + ex(a0, 6) - ex(2 * a0, 16)
    expect_lt(abs(bms(L, alpha0 = a0)$free_energy - ref), 1e-12, label = sprintf("alpha0 = %g", a0))
  }
})

test_that("exceedance probabilities for huge alphas agree across the two methods", {
  xp <- getFromNamespace("dirichlet_exceedance", "vbayes")
  # just below 1e16 the quantile integral, at and above it the normal limit
  a <- c(1, 1 + 1e-8, 1) * 1e16
  expect_equal(xp(a * (1 - 1e-9)), xp(a), tolerance = 1e-7)
  # the normal limit for K = 3 equal alphas, model 2 shifted by one sd
  # (2^66 + 2^33 is exact in double and sqrt(2^66) = 2^33):
  # P(z2 + 1 > max(z1, z3)) = int phi(z) Phi(z + 1)^2 dz
  ref <- integrate(function(z) dnorm(z) * pnorm(z + 1)^2, -Inf, Inf, rel.tol = 1e-12)$value
  expect_equal(xp(c(2^66, 2^66 + 2^33, 2^66))[2], ref, tolerance = 1e-8)
})

test_that("exceedance probabilities for K > 2 are exact", {
  xp <- getFromNamespace("dirichlet_exceedance", "vbayes")
  v <- xp(c(2, 3, 4))
  expect_equal(v, c(0.118656, 0.298740, 0.582605), tolerance = 1e-6)
  expect_equal(v, erlang_exceedance(c(2, 3, 4)), tolerance = 1e-9)
  expect_equal(sum(v), 1, tolerance = 1e-9)
  v4 <- xp(c(1, 5, 2, 3))
  expect_equal(v4, erlang_exceedance(c(1, 5, 2, 3)), tolerance = 1e-9)
  # the integral agrees with the beta tail when K = 2 is embedded as K = 3
  # with a third model that can never win (tiny alpha)
  v3 <- xp(c(2.5, 4, 1e-3))
  expect_equal(v3[1] + v3[3], pbeta(0.5, 4, 2.5), tolerance = 1e-3)
  # fractional and large alphas: still a probability distribution
  for (a in list(c(0.2, 0.5, 0.3, 1.7), c(500, 510, 490))) expect_equal(sum(xp(a)), 1, tolerance = 1e-8)
  expect_equal(xp(c(1e5, 1e5, 1e5)), rep(1 / 3, 3), tolerance = 1e-8)
})

test_that("shifting a subject's row changes nothing; permuting models permutes everything", {
  set.seed(11)
  L <- matrix(rnorm(24, -10, 2), 8, 3)
  b <- bms(L)
  L2 <- L; L2[3, ] <- L2[3, ] + 17
  b2 <- bms(L2)
  for (nm in c("alpha", "exceedance", "protected_exceedance", "omnibus_risk", "posterior"))
    expect_equal(b2[[nm]], b[[nm]], tolerance = 1e-10)
  perm <- c(3, 1, 2)
  bp <- bms(L[, perm])
  expect_equal(unname(bp$alpha), unname(b$alpha[perm]), tolerance = 1e-10)
  expect_equal(unname(bp$exceedance), unname(b$exceedance[perm]), tolerance = 1e-8)
  expect_equal(unname(bp$protected_exceedance), unname(b$protected_exceedance[perm]), tolerance = 1e-8)
  expect_equal(unname(bp$posterior), unname(b$posterior[, perm]), tolerance = 1e-10)
  expect_equal(bp$omnibus_risk, b$omnibus_risk, tolerance = 1e-10)
  expect_equal(unname(bp$ffx_posterior), unname(b$ffx_posterior[perm]), tolerance = 1e-12)
})

sim_lme <- function(m, K = 4, sd1 = 0.5, sd2 = 1) {
  L <- matrix(rnorm(length(m) * K, -13, sd2), length(m), K)
  L[cbind(seq_along(m), m)] <- rnorm(length(m), -10, sd1)
  L
}

test_that("frequencies are recovered from simulated subjects", {
  r <- c(0.6, 0.2, 0.15, 0.05)
  m20 <- rep(1:4, r * 20)
  # the mean evidences (generating model -10, others -13)
  b <- bms(sim_lme(m20, sd1 = 0, sd2 = 0))
  expect_lt(max(abs(b$expected_frequency - r)), 0.1)
  expect_gte(b$exceedance[[1]], 0.95)
  expect_lte(b$omnibus_risk, 0.1)
  set.seed(2024)
  for (rep in 1:5) {
    b <- bms(sim_lme(m20))
    expect_lt(max(abs(b$expected_frequency - r)), 0.1)
    expect_gte(b$exceedance[[1]], 0.95)
    # with 20 subjects the omnibus risk varies from draw to draw (0.02-0.35);
    # 40 subjects in the same proportions put it reliably below 0.1
    b40 <- bms(sim_lme(rep(1:4, r * 40)))
    expect_lte(b40$omnibus_risk, 0.1)
    be <- bms(sim_lme(rep(1:4, 5)))
    expect_gte(be$omnibus_risk, 0.9)
  }
})

test_that("VBA's prior convention puts one count in total", {
  b <- bms(spm_unit, alpha0 = "vba")
  expect_equal(unname(b$alpha0), c(0.5, 0.5))
  expect_equal(sum(b$alpha), 1 + 5, tolerance = 1e-10)
  expect_equal(unname(b$alpha), fixed_point_map(spm_unit, unname(b$alpha), c(0.5, 0.5)), tolerance = 1e-9)
})

test_that("family inference pools the Dirichlet counts of a partition", {
  set.seed(5)
  L <- sim_lme(rep(1:4, c(6, 5, 2, 2)))
  fam <- c("hist", "hist", "none", "none")
  b <- bms(L, families = fam)
  # SPM's flat prior over families: one count per family, shared by its models
  expect_equal(unname(b$alpha0), c(0.5, 0.5, 0.5, 0.5))
  f <- b$families
  expect_equal(unname(f$alpha), c(sum(b$alpha[1:2]), sum(b$alpha[3:4])), tolerance = 1e-12)
  expect_equal(unname(f$exceedance[1]), pbeta(0.5, f$alpha[[2]], f$alpha[[1]]), tolerance = 1e-12)
  expect_equal(unname(f$posterior), unname(b$posterior %*% cbind(c(1, 1, 0, 0), c(0, 0, 1, 1))))
  # list form, by index or by name, gives the same answer
  bl <- bms(L, families = list(hist = 1:2, none = c("m3", "m4")))
  expect_equal(bl$families$alpha, f$alpha)
  # unequal families: the null of equal family frequencies gives model k the
  # prior probability 1 / (nF |F_k|)
  b3 <- bms(L, families = c(1, 2, 2, 2))
  f0 <- c(1 / 2, 1 / 6, 1 / 6, 1 / 6)
  F0f <- sum(apply(L, 1, function(l) log(sum(exp(l) * f0))))
  expect_equal(b3$families$null_free_energy, F0f, tolerance = 1e-10)
  expect_equal(b3$families$omnibus_risk, 1 / (1 + exp(b3$free_energy - F0f)), tolerance = 1e-10)
  expect_equal(unname(b3$alpha0), c(1, 1 / 3, 1 / 3, 1 / 3))
  # VBA: one count in total, shared equally by the families
  expect_equal(unname(bms(L, families = c(1, 2, 2, 2), alpha0 = "vba")$alpha0), c(1 / 2, 1 / 6, 1 / 6, 1 / 6))
})

test_that("a list of per-subject fits gives the matrix of their ELBOs", {
  set.seed(3)
  subj <- lapply(1:3, function(i) {
    d <- data.frame(x = rnorm(30))
    d$y <- 0.5 * d$x + rnorm(30)
    list(null = vb(y ~ 1, data = d), slope = vb(y ~ x, data = d))
  })
  L <- t(sapply(subj, function(s) c(elbo(s$null), elbo(s$slope))))
  b <- bms(subj)
  expect_equal(unname(b$lme), unname(L))
  expect_equal(names(b$alpha), c("null", "slope"))
  expect_equal(b$alpha, bms(L)$alpha, ignore_attr = TRUE)
})

test_that("bad input gets clear errors", {
  expect_error(bms(matrix(c(-1, NA, -2, -3), 2)), "finite")
  expect_error(bms(matrix(c(-1, Inf, -2, -3), 2)), "finite")
  expect_error(bms(matrix(-1, 4, 1)), "only one model")
  expect_error(bms(c(-1, -2)), "matrix")
  expect_error(bms(spm_unit, alpha0 = 0), "positive")
  expect_error(bms(spm_unit, alpha0 = -1), "positive")
  expect_error(bms(spm_unit, alpha0 = c(1, 1, 1)), "one per model")
  expect_error(bms(spm_unit, alpha0 = "spm2"), "vba")
  L4 <- matrix(-10, 3, 4)
  expect_error(bms(L4, families = c(1, 1, 2)), "one family label per model")
  expect_error(bms(L4, families = list(1:2, 2:4)), "partition")
  expect_error(bms(L4, families = list(1:2, 3)), "partition")
  expect_error(bms(L4, families = list(1:2, 3:5)), "partition")
  expect_error(bms(L4, families = list(1:2, c("m3", "zz"))), "zz")
  expect_error(bms(L4, families = rep(1, 4)), "at least two")
  expect_error(bms(list(list(1, 2), list(1))), "same number")
  expect_error(bms(spm_unit, tol = -1), "tol")
  expect_error(bms(spm_unit, alpha0 = NA), "finite and positive")
  expect_error(bms(spm_unit, alpha0 = Inf), "finite and positive")
  expect_error(bms(spm_unit, alpha0 = c(1, NaN)), "finite and positive")
  expect_error(bms(spm_unit, alpha0 = numeric(0)), "finite and positive")
  expect_error(bms(spm_unit, alpha0 = 1e308), "overflows")
  expect_error(bms(matrix(c(-1e308, -1e308, -1, -1), 2)), "overflow")
  expect_error(bms(matrix(c(-1, NaN, -2, -3), 2)), "finite")
  expect_error(bms(list(list(list(elbo = -1), list(elbo = NA)))), "finite")
  expect_error(bms(spm_unit, alpah0 = 2), "unused argument.*alpah0")
})

test_that("print, summary and plot show the fit and return its numbers", {
  b <- bms(spm_unit, families = c("a", "b"))
  expect_output(print(b), "omnibus risk")
  s <- summary(b)
  expect_equal(s$models$freq_sd[1],
               sqrt(b$alpha[[1]] * b$alpha[[2]] / (sum(b$alpha)^2 * (sum(b$alpha) + 1))))
  expect_output(print(s), "Bayesian omnibus risk")
  pdf(NULL)
  on.exit(dev.off())
  pd <- plot(b)
  expect_equal(pd$pxp, unname(b$protected_exceedance))
  expect_equal(plot(b, families = TRUE)$xp, unname(b$families$exceedance))
})
