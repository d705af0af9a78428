# SGVB: gradient estimators against closed forms, the engine against known
# optima (Gaussian targets, the mean-field KL penalty) and against CAVI.

gauss_target <- function(m, A) list(type = "gauss", m = as.double(m), A = A)

# Raw gradient estimates (P x nrep) at q = N(mu, L L').
grads <- function(m, A, mu, L, fullrank, estimator, S = 1, nrep = 20000, baseline = TRUE,
                  stl = FALSE) {
  .Call(vbayes:::C_sgvb_grad, gauss_target(m, A), as.double(mu), L,
        c(fullrank, estimator == "score", S, nrep, baseline, stl))
}

# Analytic ELBO gradient for f = -1/2 (z - m)' A (z - m): d/dmu = -A (mu - m),
# d/dL = -A L (lower triangle), d/dlog L_jj = (-A L)_jj L_jj + 1.
elbo_grad <- function(m, A, mu, L, fullrank) {
  d <- length(mu)
  G <- -A %*% L
  out <- -drop(A %*% (mu - m))
  for (j in seq_len(d)) {
    if (!fullrank) { out <- c(out, G[j, j] * L[j, j] + 1); next }
    for (i in j:d) out <- c(out, if (i == j) G[j, j] * L[j, j] + 1 else G[i, j])
  }
  out
}

test_that("every estimator is unbiased for the ELBO gradient (Gaussian target)", {
  set.seed(11)
  d <- 3
  B <- matrix(rnorm(d * d), d); A <- crossprod(B) + diag(d)
  m <- c(0.5, -1, 2); mu <- c(0, 0.3, 1)
  for (fullrank in c(TRUE, FALSE)) {
    L <- if (fullrank) matrix(c(0.8, 0.2, -0.1, 0, 0.6, 0.3, 0, 0, 0.9), d) else diag(c(0.8, 0.6, 0.9))
    truth <- elbo_grad(m, A, mu, L, fullrank)
    for (cfg in list(list("reparam", 1, FALSE), list("reparam", 1, TRUE), list("score", 4, FALSE))) {
      G <- grads(m, A, mu, L, fullrank, cfg[[1]], S = cfg[[2]], stl = cfg[[3]],
                 nrep = if (cfg[[1]] == "score") 40000 else 20000)
      z <- (rowMeans(G) - truth) / (apply(G, 1, sd) / sqrt(ncol(G)))
      expect_true(all(abs(z) < 4), info = paste(fullrank, cfg[[1]], cfg[[3]], paste(round(z, 2), collapse = " ")))
    }
  }
})

test_that("reparameterisation variance of the mean gradient is A Sigma A", {
  set.seed(12)
  d <- 3
  A <- matrix(c(3, 1, 0.5, 1, 2, 0.2, 0.5, 0.2, 1), d)
  L <- matrix(c(1.2, 0.4, -0.3, 0, 0.7, 0.5, 0, 0, 0.4), d)
  N <- 1e5
  G <- grads(c(1, 0, -1), A, c(0, 0, 0), L, TRUE, "reparam", nrep = N)[1:d, ]
  V <- A %*% tcrossprod(L) %*% A
  Vhat <- cov(t(G))
  # the gradient is exactly Gaussian: se of a covariance is sqrt((V_ii V_jj + V_ij^2) / N)
  se <- sqrt((outer(diag(V), diag(V)) + V^2) / N)
  expect_true(all(abs(Vhat - V) < 4 * se))
})

test_that("score-function variance matches its 1-D closed form (no baseline)", {
  set.seed(13)
  a <- 2; m <- 0.5; N <- 2e5
  for (cfg in list(c(mu = 1.5, s = 0.7), c(mu = 0.5, s = 1.3))) {
    delta <- cfg[["mu"]] - m; s <- cfg[["s"]]
    g <- grads(m, matrix(a), cfg[["mu"]], matrix(s), FALSE, "score", nrep = N, baseline = FALSE)[1, ]
    v <- a^2 * (delta^4 / (4 * s^2) + 3.5 * delta^2 + 3.75 * s^2)
    se <- sd((g - mean(g))^2) / sqrt(N)
    expect_lt(abs(var(g) - v), 4 * se)
    # and the pathwise estimator: a^2 sigma^2
    gr <- grads(m, matrix(a), cfg[["mu"]], matrix(s), FALSE, "reparam", nrep = N)[1, ]
    expect_lt(abs(var(gr) - a^2 * s^2), 4 * a^2 * s^2 * sqrt(2 / N))
  }
})

test_that("sticking-the-landing gradients vanish when q equals a Gaussian target", {
  set.seed(14)
  Sig <- matrix(c(2, 0.6, 0.6, 1), 2)
  L <- t(chol(Sig))
  G <- grads(c(1, -1), solve(Sig), c(1, -1), L, TRUE, "reparam", nrep = 100, stl = TRUE)
  expect_lt(max(abs(G)), 1e-12)
})

test_that("vb_density recovers the mean and covariance of a Gaussian target (fullrank)", {
  set.seed(21)
  Sig <- matrix(c(2, 0.8, -0.3, 0.8, 1, 0.2, -0.3, 0.2, 0.5), 3)
  P <- solve(Sig); m <- c(1, -2, 0.5)
  fit <- vb_density(function(th) -0.5 * sum((th - m) * (P %*% (th - m))), init = c(a = 0, b = 0, c = 0),
                    gradient = function(th) -drop(P %*% (th - m)), control = vb_control(quiet = TRUE))
  expect_s3_class(fit, "vbdensity")
  expect_true(fit$converged)
  expect_lt(max(abs(coef(fit) - m) / sqrt(diag(Sig))), 0.05)
  expect_lt(max(abs(vcov(fit) - Sig) / sqrt(outer(diag(Sig), diag(Sig)))), 0.05)
  # log Z = log sqrt(det(2 pi Sigma)), and the ELBO is exact at q = target
  expect_lt(abs(elbo(fit) - 0.5 * log(det(2 * pi * Sig))), 4 * fit$mc_se + 1e-3)
  # numerical gradient and the score estimator reach the same optimum
  set.seed(22)
  fit2 <- vb_density(function(th) -0.5 * sum((th - m) * (P %*% (th - m))), init = c(0, 0, 0),
                     control = vb_control(quiet = TRUE))
  expect_lt(max(abs(coef(fit2) - m) / sqrt(diag(Sig))), 0.05)
  set.seed(23)
  fit3 <- vb_density(function(th) -0.5 * sum((th - m) * (P %*% (th - m))), init = c(0, 0, 0),
                     approx = "meanfield", estimator = "score",
                     control = vb_control(quiet = TRUE, samples = 16))
  # mean-field optimum: means m, variances 1 / P_jj
  expect_lt(max(abs(coef(fit3) - m) / sqrt(1 / diag(P))), 0.1)
  expect_lt(max(abs(diag(vcov(fit3)) * diag(P) - 1)), 0.15)
})

test_that("mean-field KL(q*||p) for a correlated bivariate Gaussian is -1/2 log(1 - rho^2)", {
  for (rho in c(0.3, 0.6, 0.9)) {
    set.seed(round(100 * rho))
    Sig <- matrix(c(1, rho, rho, 1), 2); P <- solve(Sig)
    fit <- vb_density(function(th) -0.5 * sum(th * (P %*% th)), init = c(0.5, -0.5),
                      gradient = function(th) -drop(P %*% th), approx = "meanfield",
                      control = vb_control(quiet = TRUE, elbo_samples = 20000))
    logZ <- log(2 * pi) + 0.5 * log(det(Sig))
    mu <- coef(fit); V <- vcov(fit)
    # ELBO of the fitted q in closed form: E f + entropy
    elbo_q <- -0.5 * (sum(mu * (P %*% mu)) + sum(P * V)) + 0.5 * log(det(2 * pi * exp(1) * V))
    expect_lt(abs((logZ - elbo_q) - (-0.5 * log(1 - rho^2))), 0.01)
    expect_lt(abs(elbo(fit) - elbo_q), 4 * fit$mc_se)
  }
})

test_that("SGVB on the GLMs agrees with CAVI (means within 0.05 sd, ELBO within 0.1 nat)", {
  set.seed(31)
  n <- 150
  d <- data.frame(x = rnorm(n), z = runif(n))
  d$cnt <- rpois(n, exp(0.3 + 0.6 * d$x - 0.5 * d$z))
  d$bin <- rbinom(n, 1, plogis(-0.2 + 1.2 * d$x))
  cases <- list(list(cnt ~ x + z, poisson(), normal(0, 1)),
                list(bin ~ x + z, binomial(), normal(0, 1)),
                list(bin ~ x, binomial(), laplace(0, 0.5)))
  for (cs in cases) for (ap in c("fullrank", "meanfield")) {
    f0 <- vb(cs[[1]], data = d, family = cs[[2]], prior = cs[[3]], approx = ap)
    f1 <- vb(cs[[1]], data = d, family = cs[[2]], prior = cs[[3]], approx = ap, method = "sgvb",
             control = vb_control(quiet = TRUE))
    info <- paste(cs[[2]]$family, ap)
    expect_lt(max(abs(coef(f1) - coef(f0)) / sqrt(diag(vcov(f0)))), 0.05, label = info)
    expect_lt(abs(elbo(f1) - elbo(f0)), 0.1, label = info)
    expect_equal(f1$method, "sgvb")
  }
})

test_that("gaussian SGVB (joint q over beta and log tau) is a valid bound near CAVI", {
  set.seed(32)
  n <- 60
  x <- rnorm(n); y <- 1 + 0.5 * x + rnorm(n, sd = 0.8)
  d <- data.frame(x = x, y = y)
  f0 <- vb(y ~ x, data = d)
  f1 <- vb(y ~ x, data = d, method = "sgvb", control = vb_control(quiet = TRUE))
  expect_null(f1$tau)
  expect_lt(max(abs(coef(f1) - coef(f0)) / sqrt(diag(vcov(f0)))), 0.05)
  # exact log evidence: beta | tau integrates in closed form, tau by quadrature
  X <- cbind(1, x); S0 <- diag(c(100, 1))
  lpy_tau <- function(tau) vapply(tau, function(t) {
    C <- X %*% S0 %*% t(X) + diag(n) / t
    R <- chol(C)
    -0.5 * n * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(backsolve(R, y, transpose = TRUE)^2)
  }, 0)
  mx <- lpy_tau(1 / 0.64)
  logZ <- mx + log(integrate(function(t) exp(lpy_tau(t) - mx) * dgamma(t, 1, 1), 0.2, 6)$value)
  expect_lt(elbo(f1), logZ)
  # the joint Gaussian family is at least as good as q(beta) q(tau) up to 0.1 nat
  expect_gt(elbo(f1), elbo(f0) - 0.1)
  dr <- draws(f1, 2000)
  expect_equal(colnames(dr), c("(Intercept)", "x", "sigma"))
  s <- summary(f1)
  expect_equal(length(s$sigma), 3)
})

test_that("set.seed() reproduces an SGVB run exactly", {
  f <- function(th) -0.5 * sum(th^2) - 0.1 * sum(th^4)
  set.seed(5); a <- vb_density(f, c(1, 1), control = vb_control(quiet = TRUE, sgvb_maxit = 500))
  set.seed(5); b <- vb_density(f, c(1, 1), control = vb_control(quiet = TRUE, sgvb_maxit = 500))
  expect_identical(a$coefficients, b$coefficients)
  expect_identical(a$elbo_trace, b$elbo_trace)
})

test_that("vb_density objects work with the vbfit methods", {
  set.seed(41)
  fit <- vb_density(function(th, s) sum(dnorm(th, 0, s, log = TRUE)), init = c(u = 1, v = 1),
                    s = 2, control = vb_control(quiet = TRUE, sgvb_maxit = 3000))
  expect_output(print(fit), "log density")
  expect_output(print(summary(fit)), "ELBO")
  expect_equal(dim(draws(fit, 10)), c(10L, 2L))
  expect_equal(names(coef(fit)), c("u", "v"))
  expect_equal(dim(confint(fit)), c(2L, 2L))
  pdf(NULL); on.exit(dev.off())
  pd <- plot(fit)
  expect_equal(nrow(pd), length(fit$elbo_trace))
  # ELBO of a normalised density is at most 0 and here close to it
  expect_lt(elbo(fit), 4 * fit$mc_se)
  expect_gt(elbo(fit), -0.05)
})

test_that("bad input gives clear errors", {
  expect_error(vb_density("a", 1), "must be a function")
  expect_error(vb_density(function(th) 1, c(NA, 1)), "finite starting values")
  expect_error(vb_density(function(th) c(1, 2), 1), "single finite number")
  expect_error(vb_density(function(th) -sum(th^2), 1, gradient = function(th) c(1, 2)), "length 1")
  expect_error(vb_density(function(th) if (th < 0) -Inf else 0, -1), "single finite number")
  expect_error(vb_control(samples = 0), "samples")
  expect_error(vb_control(step_size = -1), "step_size")
  expect_error(vb_control(estimator = "foo"))
  expect_error(vb(mpg ~ wt, data = mtcars, approx = "block", method = "sgvb"), "fullrank")
  # C re-checks its arguments
  expect_error(.Call(vbayes:::C_sgvb_fit, list(type = "gauss", m = 0, A = matrix(1)), 0, matrix(1), 1, NULL), "control")
  expect_error(.Call(vbayes:::C_sgvb_fit, list(type = "gauss", m = 0, A = matrix(1)), 0, matrix(-1),
                     as.double(1:14), NULL), "diagonal")
  expect_error(.Call(vbayes:::C_sgvb_grad, list(type = "nope"), 0, matrix(1), as.double(1:6)), "unknown")
  expect_error(.Call(vbayes:::C_sgvb_grad, list(type = "r", fn = 1, gr = NULL, d = 1L), 0, matrix(1),
                     as.double(1:6)), "function")
})
