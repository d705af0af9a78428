# vb_diagnose(): PSIS k-hat against the known tail index of Gaussian
# importance ratios, the GPD fit against simulated data, IWAE against exact
# log evidence.

# A posterior class of the tests' own, with a given Gaussian q and log
# density: it reaches vb_diagnose() the way any posterior class does, through
# methods of the two generics q_sample() and log_joint(), here registered
# for it (no namespace unlocking).
fake_fit <- function(mu, Sigma, target, elbo = NA_real_) {
  structure(list(coefficients = setNames(mu, paste0("t", seq_along(mu))), vcov = as.matrix(Sigma),
                 elbo = elbo, target = target),
            class = c("test_gauss_q", "vb_posterior"))
}
registerS3method("log_joint", "test_gauss_q", function(fit, theta) apply(theta, 2L, fit$target),
                 envir = asNamespace("vbayes"))

test_that("the Zhang-Stephens fit recovers the shape of simulated generalised Pareto data", {
  set.seed(1)
  for (k in c(-0.3, 0.2, 0.7)) {
    u <- runif(5000)
    x <- 1.5 * ((1 - u)^(-k) - 1) / k      # GPD(k, sigma = 1.5) by inversion
    f <- vbayes:::gpd_fit(x)
    expect_lt(abs(f$k - k), 0.07)
    expect_lt(abs(f$sigma / 1.5 - 1), 0.1)
  }
})

test_that("k-hat is close to 1 - sigma^2 for a N(0, 1) target and N(0, sigma^2) proposals", {
  set.seed(2)
  for (s2 in c(0.8, 0.5)) {
    fit <- fake_fit(0, s2, function(th) dnorm(th, log = TRUE))
    k <- vapply(1:4, function(r) vb_diagnose(fit, S = 1e5, K = 1)$khat, 0)
    expect_lt(abs(mean(k) - (1 - s2)), 0.05)
  }
  # wider proposals: bounded ratios, k-hat below 0.5 ("good")
  d <- vb_diagnose(fake_fit(0, 2, function(th) dnorm(th, log = TRUE)), S = 1e4, K = 1)
  expect_lt(d$khat, 0.5)
  expect_match(d$khat_label, "good")
})

test_that("IWAE bounds increase with K towards the exact evidence of a conjugate model", {
  set.seed(3)
  n <- 20; s <- 0.5
  x1 <- rnorm(n); X <- cbind(x1, 0.7 * x1 + rnorm(n))
  y <- drop(X %*% c(1, -0.5)) + rnorm(n, sd = s)
  # theta ~ N(0, I), y | theta ~ N(X theta, s^2 I): p(y) = N(y; 0, s^2 I + X X')
  C <- s^2 * diag(n) + tcrossprod(X)
  R <- chol(C)
  logZ <- -0.5 * n * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(backsolve(R, y, transpose = TRUE)^2)
  Lam <- crossprod(X) / s^2 + diag(2)
  m <- solve(Lam, crossprod(X, y) / s^2)
  target <- function(th) sum(dnorm(y, drop(X %*% th), s, log = TRUE)) + sum(dnorm(th, log = TRUE))
  # the exact mean-field optimum: means m, variances 1 / Lam_ii
  fit <- fake_fit(drop(m), diag(1 / diag(Lam)), target)
  d <- vb_diagnose(fit, S = 40000, K = c(1, 10, 100, 1000))
  gap <- 0.5 * log(prod(diag(Lam)) / det(Lam))   # KL of the mean-field optimum
  expect_lt(abs((logZ - d$iwae[1]) - gap), 4 * d$iwae_se[1])
  expect_true(all(diff(d$iwae) > -3 * sqrt(d$iwae_se[-1]^2 + d$iwae_se[-4]^2)))
  expect_true(all(d$iwae < logZ + 3 * d$iwae_se))
  expect_lt(logZ - d$iwae[4], (logZ - d$iwae[1]) / 4)
  expect_lt(abs(d$logZ_psis - logZ), 0.05)
})

test_that("vb_diagnose works on CAVI and SGVB fits; IS evidence matches quadrature", {
  set.seed(4)
  fit <- vb(mpg ~ wt, data = mtcars, prior = normal(0, 1), prior_intercept = normal(0, 10),
            prior_precision = gamma_prior(1, 1))
  d <- vb_diagnose(fit, S = 4000, K = c(1, 100))
  # exact log evidence: beta | tau in closed form, tau by quadrature
  X <- cbind(1, mtcars$wt); y <- mtcars$mpg; n <- nrow(X); S0 <- diag(c(100, 1))
  lpy_tau <- function(tau) vapply(tau, function(t) {
    R <- chol(X %*% S0 %*% t(X) + diag(n) / t)
    -0.5 * n * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(backsolve(R, y, transpose = TRUE)^2)
  }, 0)
  mx <- lpy_tau(0.08)
  logZ <- mx + log(integrate(function(t) exp(lpy_tau(t) - mx) * dgamma(t, 1, 1), 0.005, 0.5)$value)
  expect_lt(d$elbo, logZ)
  expect_lt(abs(d$logZ_psis - logZ), 0.05)
  expect_lt(abs(d$iwae[2] - logZ), 0.05)
  expect_lt(abs(d$elbo_mc - d$elbo), 4 * d$elbo_mc_se)
  expect_output(print(d), "Pareto k-hat")
  # SGVB fit (joint q over beta and log tau) and a Poisson CAVI fit
  f2 <- vb(mpg ~ wt, data = mtcars, method = "sgvb", prior = normal(0, 1), prior_intercept = normal(0, 10),
            prior_precision = gamma_prior(1, 1), control = vb_control(quiet = TRUE))
  d2 <- vb_diagnose(f2, S = 4000, K = 100)
  expect_lt(abs(d2$logZ_psis - logZ), 0.05)
  expect_lt(abs(d2$elbo_mc - elbo(f2)), 4 * d2$elbo_mc_se)
  dp <- data.frame(x = rnorm(80)); dp$y <- rpois(80, exp(1 + 0.3 * dp$x))
  f3 <- vb(y ~ x, data = dp, family = poisson(), approx = "meanfield")
  d3 <- vb_diagnose(f3, S = 2000, K = 10)
  expect_lt(abs(d3$elbo_mc - elbo(f3)), 4 * d3$elbo_mc_se)
  expect_gt(d3$iwae, elbo(f3) - 4 * d3$elbo_mc_se)
})

has_method <- function(generic, cls)
  !is.null(utils::getS3method(generic, cls, optional = TRUE, envir = asNamespace("vbayes")))

test_that("vb_diagnose works on vb_density fits", {
  skip_if_not(has_method("log_joint", "vbdensity"),
              "log_joint() for vbdensity comes with the vb_density() object model (sgvb branch)")
  set.seed(4)
  f4 <- vb_density(function(th) sum(dnorm(th, c(1, 2), log = TRUE)), c(0, 0),
                   control = vb_control(quiet = TRUE, sgvb_maxit = 3000))
  d4 <- vb_diagnose(f4, S = 1000, K = 10)
  # a normalised Gaussian target: log Z = 0
  expect_lt(abs(d4$logZ_psis), 0.02)
})

test_that("vb_diagnose works on vb_lds fits: the structured q is exact at the fitted parameters", {
  skip_if_not(has_method("log_joint", "vblds"),
              "log_joint() for vblds comes with the vb_lds() object model (lds branch)")
  p <- lds_test_params(k = 1, N = 3, seed = 2)
  set.seed(2)
  T <- 40
  z <- numeric(T); z[1] <- p$m0
  for (t in 2:T) z[t] <- p$A * z[t - 1] + rnorm(1, sd = sqrt(p$Q))
  y <- outer(z, drop(p$C)) + rep(p$d, each = T) + matrix(rnorm(3 * T, sd = sqrt(p$R)), T, byrow = TRUE)
  fit <- vb_lds(y, 1, params = p, learn = FALSE, control = vb_control(tol = 1e-12, quiet = TRUE))
  d <- vb_diagnose(fit, S = 200, K = c(1, 10))
  ll <- lds_dense_loglik(p, y)
  # log p(y, z) - log q(z) = log p(y) for every draw when q(z) = p(z | y)
  expect_lt(max(abs(d$log_ratios - ll)), 1e-6)
  expect_equal(d$iwae, c(ll, ll), tolerance = 1e-8)
  expect_equal(d$logZ_psis, ll, tolerance = 1e-8)
})

test_that("vb_diagnose rejects bad input", {
  fit <- vb(mpg ~ wt, data = mtcars)
  expect_error(vb_diagnose(list()), "fit from vb")
  expect_error(vb_diagnose(fit, S = 5), "at least 10")
  expect_error(vb_diagnose(fit, S = 100, K = 200), "between 1 and S")
  expect_error(vb_diagnose(fit, K = 0.5), "whole numbers")
  # a posterior class without a log joint says which generic is missing
  nolj <- structure(list(coefficients = c(a = 0), vcov = matrix(1), elbo = 0),
                    class = c("test_no_lj", "vb_posterior"))
  expect_error(vb_diagnose(nolj, S = 100, K = 10), "no log_joint\\(\\) method")
  # and one without a Gaussian q over coefficients, that it cannot be sampled
  noq <- structure(list(elbo = 0), class = c("test_no_q", "vb_posterior"))
  expect_error(vb_diagnose(noq, S = 100, K = 10), "no q_sample\\(\\) method")
  expect_error(draws(noq, 10), "no q_sample\\(\\) method")
})

test_that("the bootstrap interval of k-hat covers the true shape of a Pareto tail", {
  # importance weights whose tail is generalised Pareto with shape k: k-hat
  # estimates k, its bootstrap 90% interval covers it, and the interval
  # narrows with more draws (the tail fit uses about 3 sqrt(S) of them)
  set.seed(4)
  for (k in c(0.3, 0.8)) {
    width <- numeric(0)
    for (S in c(4000, 16000)) {
      w <- ((1 - runif(S))^(-k) - 1) / k
      ki <- vbayes:::khat_boot(log(w))
      expect_true(ki[1] <= k + 0.03 && k - 0.03 <= ki[2],
                  label = sprintf("k = %g, S = %d: [%.2f, %.2f]", k, S, ki[1], ki[2]))
      width <- c(width, ki[2] - ki[1])
    }
    expect_lt(width[2], width[1])
  }
})

test_that("vb_diagnose reports k-hat's bootstrap interval and says when it spans the threshold", {
  set.seed(5)
  ld <- function(th) structure(-0.5 * sum(th^2), gradient = -th)
  fit <- vb_density(ld, init = c(a = 1, b = 2), control = vb_control(quiet = TRUE))
  dg <- vb_diagnose(fit, S = 2000)
  expect_length(dg$khat_interval, 2L)
  expect_true(all(is.finite(dg$khat_interval)))
  expect_lt(dg$khat_interval[2], 0.7)  # q equals this Gaussian target
  expect_output(print(dg), "bootstrap 90%")
})

test_that("q's moments are checked against the importance-weighted ones", {
  # closed form: q = N(0, 0.8^2) for the target N(0, 1), exact weights
  set.seed(11)
  th <- matrix(rnorm(20000, 0, 0.8), 1)
  lw <- dnorm(th, 0, 1, log = TRUE) - dnorm(th, 0, 0.8, log = TRUE)
  m <- is_moments(th, exp(lw - max(lw)))
  expect_equal(m$sd_ratio, 0.8, tolerance = 0.03)
  expect_lt(m$shift, 0.05)
  # a mean-field q of a Gaussian with correlation 0.5: its sds are
  # sqrt(1 - 0.5^2) of the marginal sds, which k-hat alone calls good
  P <- solve(matrix(c(1, 0.5, 0.5, 1), 2))
  set.seed(12)
  fit <- vb_density(function(x) -0.5 * sum(x * (P %*% x)), init = c(3, -3), approx = "meanfield",
                    control = vb_control(quiet = TRUE))
  dg <- vb_diagnose(fit, S = 10000)
  expect_lt(dg$khat, 0.7)
  expect_equal(dg$is_sd_ratio, rep(sqrt(0.75), 2), tolerance = 0.05)
  expect_match(dg$khat_label, "moments are off")
  expect_output(print(dg), "importance-weighted moments")
  # and a full-rank q of the same target is not flagged
  fr <- vb_density(function(x) -0.5 * sum(x * (P %*% x)), init = c(3, -3), control = vb_control(quiet = TRUE))
  dr <- vb_diagnose(fr, S = 10000)
  expect_equal(dr$is_sd_ratio, c(1, 1), tolerance = 0.05)
  expect_false(grepl("moments are off", dr$khat_label))
})
