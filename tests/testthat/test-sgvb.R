# SGVB: gradient estimators against closed forms, the engine against known
# optima (Gaussian targets with closed-form normalisers, the mean-field KL
# penalty, a conjugate regression, exact evidence by quadrature), and its
# failure paths: statuses, errors and the RNG state they leave.

gauss_target <- function(m, A) list(type = "gauss", m = as.double(m), A = A)

# Raw gradient estimates (P x nrep) at q = N(mu, L L').
grads <- function(m, A, mu, L, fullrank, estimator, S = 1, nrep = 20000, baseline = TRUE,
                  stl = FALSE) {
  .Call(vbayes:::C_sgvb_grad, gauss_target(m, A), as.double(mu), L,
        list(fullrank = fullrank, score = estimator == "score", samples = as.integer(S),
             nrep = as.integer(nrep), baseline = baseline, stl = stl))
}

# The engine on a Gaussian target, called directly.
fit_gauss <- function(m, A, L0 = diag(length(m)), fullrank = TRUE, control = vb_control(quiet = TRUE)) {
  .Call(vbayes:::C_sgvb_fit, gauss_target(m, A), rep(0, length(m)), L0, NULL, control,
        list(fullrank = fullrank, score = FALSE, samples = 1L))
}

seed_now <- function() get(".Random.seed", envir = globalenv())

# .Random.seed after set.seed(seed) and n standard normal draws: the state the
# engine must leave when it stops after n draws (norm_rand, as rnorm uses).
seed_after <- function(seed, n) {
  set.seed(seed)
  stats::rnorm(n)
  seed_now()
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
  expect_s3_class(fit, c("vbdensity", "vb_posterior"), exact = TRUE)
  expect_true(fit$converged)
  expect_identical(fit$status, 0L)
  expect_lt(max(abs(coef(fit) - m) / sqrt(diag(Sig))), 0.05)
  expect_lt(max(abs(fit$vcov - Sig) / sqrt(outer(diag(Sig), diag(Sig)))), 0.05)
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
  expect_lt(max(abs(diag(fit3$vcov) * diag(P) - 1)), 0.15)
})

test_that("mean-field KL(q*||p) for a correlated bivariate Gaussian is -1/2 log(1 - rho^2)", {
  for (rho in c(0.3, 0.6, 0.9)) {
    set.seed(round(100 * rho))
    Sig <- matrix(c(1, rho, rho, 1), 2); P <- solve(Sig)
    fit <- vb_density(function(th) -0.5 * sum(th * (P %*% th)), init = c(0.5, -0.5),
                      gradient = function(th) -drop(P %*% th), approx = "meanfield",
                      control = vb_control(quiet = TRUE, elbo_samples = 20000))
    logZ <- log(2 * pi) + 0.5 * log(det(Sig))
    mu <- coef(fit); V <- fit$vcov
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
  ctl <- vb_control(quiet = TRUE, sgvb_maxit = 500)
  # 500 steps are too few to converge: the warning comes even with quiet = TRUE
  set.seed(5); expect_warning(a <- vb_density(f, c(1, 1), control = ctl), "not converged after 500")
  set.seed(5); expect_warning(b <- vb_density(f, c(1, 1), control = ctl), "not converged after 500")
  expect_identical(a$status, 1L)
  expect_identical(a$coefficients, b$coefficients)
  expect_identical(a$elbo_trace, b$elbo_trace)
})

test_that("vb_density fits print, summarise, and give q_sample() / log_joint() for vb_diagnose()", {
  set.seed(41)
  fit <- vb_density(function(th, s) sum(dnorm(th, 0, s, log = TRUE)), init = c(u = 1, v = 1),
                    s = 2, control = vb_control(quiet = TRUE, sgvb_maxit = 3000))
  expect_output(print(fit), "log density")
  expect_output(print(summary(fit)), "ELBO")
  # the summary's interval is the equal-tailed interval of q: N(mean, sd^2) quantiles
  tab <- summary(fit, level = 0.9)$coefficients
  expect_equal(unname(tab[, 3]), unname(coef(fit) + qnorm(0.05) * sqrt(diag(fit$vcov))))
  expect_equal(names(coef(fit)), c("u", "v"))
  # ELBO of a normalised density is at most 0 and here close to it
  expect_lt(elbo(fit), 4 * fit$mc_se)
  expect_gt(elbo(fit), -0.05)
  # q_sample: draws from N(mu, Sigma) and log q = the bivariate normal density at them
  qs <- vbayes:::q_sample.vbdensity(fit, 20000)
  expect_equal(dim(qs$theta), c(2L, 20000L))
  V <- fit$vcov; mu <- coef(fit)
  dev <- qs$theta - mu
  ref <- -0.5 * colSums(dev * solve(V, dev)) - log(2 * pi) - 0.5 * log(det(V))
  expect_equal(qs$logq, ref, tolerance = 1e-10)
  expect_lt(max(abs(rowMeans(qs$theta) - mu) / sqrt(diag(V))), 4 / sqrt(20000))
  # log_joint: the user's log density (with its extra argument) at each column
  th <- matrix(c(0, 0, 1, -2, 3, 0.5), 2)
  expect_equal(vbayes:::log_joint.vbdensity(fit, th), colSums(dnorm(th, 0, 2, log = TRUE)))
})

test_that("the engine on a Gaussian target: ELBO = log normaliser, q = target (closed forms)", {
  set.seed(51)
  Sig <- matrix(c(1.5, -0.6, 0.2, -0.6, 0.8, 0.1, 0.2, 0.1, 2), 3)
  m <- c(-1, 0.5, 2); A <- solve(Sig)
  r <- fit_gauss(m, A)
  expect_identical(r$status, 0L)
  expect_true(r$converged)
  # f = -1/2 (theta - m)' A (theta - m): log Z = d/2 log 2 pi + 1/2 log det Sig
  logZ <- 1.5 * log(2 * pi) + 0.5 * log(det(Sig))
  expect_lt(abs(r$elbo - logZ), 1e-3 + 4 * r$elbo_se)
  expect_lt(max(abs(r$mu - m) / sqrt(diag(Sig))), 0.05)
  expect_lt(max(abs(tcrossprod(r$L) - Sig) / sqrt(outer(diag(Sig), diag(Sig)))), 0.05)
  # the trace holds one finite estimate per accepted step, and grows as needed
  expect_length(r$trace, r$iterations - r$n_nonfinite)
  expect_true(all(is.finite(r$trace)))
  # a step cap that could never be allocated up front (2^31 - 2 doubles = 17 GB)
  set.seed(51)
  r2 <- fit_gauss(m, A, control = vb_control(quiet = TRUE, sgvb_maxit = .Machine$integer.max - 1L))
  expect_identical(r2$trace, r$trace)
  # the step cap: status "maxit", not converged
  r3 <- fit_gauss(m, A, control = vb_control(quiet = TRUE, sgvb_maxit = 150))
  expect_identical(r3$status, 1L)
  expect_false(r3$converged)
  expect_length(r3$trace, 150L)
})

test_that("gaussian regression with a tight noise prior: SGVB matches the conjugate posterior and evidence", {
  set.seed(52)
  n <- 40
  x <- rnorm(n); y <- 2 - 0.7 * x + rnorm(n, sd = 0.5)
  tau0 <- 4; a0 <- 1e5                          # tau ~ Gamma(a0, a0 / tau0): sd(tau) / tau = 0.003
  f1 <- vb(y ~ x, data = data.frame(x = x, y = y), method = "sgvb", prior = normal(0, 1),
           prior_intercept = normal(0, 10), prior_precision = gamma_prior(a0, a0 / tau0),
           control = vb_control(quiet = TRUE))
  expect_true(f1$converged)
  # beta ~ N(0, diag(100, 1)), y | beta ~ N(X beta, I / tau0): exact Gaussian posterior
  X <- cbind(1, x); S0 <- diag(c(100, 1))
  V <- solve(crossprod(X) * tau0 + solve(S0)); m <- V %*% crossprod(X, y) * tau0
  expect_lt(max(abs(coef(f1) - m) / sqrt(diag(V))), 0.05)
  expect_lt(max(abs(f1$vcov - V) / sqrt(outer(diag(V), diag(V)))), 0.05)
  # evidence: beta integrated in closed form, tau by quadrature over its prior
  lpy_tau <- function(tau) vapply(tau, function(t) {
    R <- chol(X %*% S0 %*% t(X) + diag(n) / t)
    -0.5 * n * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(backsolve(R, y, transpose = TRUE)^2)
  }, 0)
  mx <- lpy_tau(tau0)
  logZ <- mx + log(integrate(function(t) exp(lpy_tau(t) - mx) * dgamma(t, a0, a0 / tau0),
                             tau0 * 0.95, tau0 * 1.05)$value)
  expect_lt(elbo(f1), logZ + 1e-6)
  expect_gt(elbo(f1), logZ - 0.02)
  # the GLM core result vb_fit() reads, with its status
  set.seed(53)
  core <- vbayes:::sgvb_glm(vbayes:::fit_model(f1), "fullrank", vb_control(quiet = TRUE))
  expect_true(all(c("mu", "Sigma", "elbo", "trace", "loglik", "kl", "iterations", "status",
                    "converged", "tau", "eta_mean", "eta_var", "mc_se", "sgvb", "blocks") %in%
                  names(core)))
  expect_identical(core$status, 0L)
  expect_true(core$converged)
  expect_lt(max(abs(core$mu - m) / sqrt(diag(V))), 0.05)
})

test_that("a density with a hard boundary: no convergence claim with an ELBO of -Inf", {
  # log density -Inf below -2.5: every Gaussian q has ELBO -Inf (issue 10:
  # this reported converged = TRUE with elbo = -Inf)
  f <- function(th) if (th[1] < -2.5) -Inf else dnorm(th[1], log = TRUE)
  set.seed(1)
  expect_warning(fit <- vb_density(f, 0, control = vb_control(quiet = TRUE)), "non-finite")
  expect_false(fit$converged)
  expect_identical(fit$status, 4L)
  expect_identical(fit$elbo, -Inf)
  expect_gt(fit$sgvb$n_nonfinite, 0)
  # quiet never silences it
  set.seed(1)
  expect_warning(vb_density(f, 0, control = vb_control(quiet = TRUE, sgvb_maxit = 3000)), "non-finite")
})

test_that("persistent errors stop the fit with their text, the RNG advanced by the draws made", {
  d <- 2L
  pre <- 1L + 2L * d # vb_density()'s check at init, then the curvature at init (init_method = "given")
  ctl <- vb_control(quiet = TRUE, step_size = 0.1)   # no step-size search
  for (k in c(37L, 120L)) {
    calls <- 0L
    f <- function(th) {
      calls <<- calls + 1L
      if (calls > pre + k) stop("boom after call ", pre + k)
      -0.5 * sum(th^2)
    }
    ref <- seed_after(99, (k + 100L) * d)   # k good draws, then 100 rejected ones
    set.seed(99)
    expect_error(vb_density(f, c(0.1, 0.2), gradient = function(th) -th, init_method = "given",
                            control = ctl),
                 sprintf("100 draws from q in a row were rejected.*boom after call %d.*theta = c\\(", pre + k))
    expect_identical(seed_now(), ref)
  }
})

test_that("a run ended by non-finite draws or an interrupt leaves the RNG where its draws took it", {
  d <- 2L; k <- 150L
  pre <- 1L + 2L * d
  calls <- 0L
  f <- function(th) {
    calls <<- calls + 1L
    if (calls > pre + k) NaN else -0.5 * sum(th^2)
  }
  ctl <- vb_control(quiet = TRUE, step_size = 0.1)   # no step-size search
  ref <- seed_after(7, (k + 100L) * d)                 # k good draws, then 100 bad ones end the run
  set.seed(7)
  expect_error(vb_density(f, c(0.1, 0.2), gradient = function(th) -th, control = ctl,
                          init_method = "given"),
               "in a row were rejected.*log density was NaN")
  expect_identical(seed_now(), ref)
  k <- k + pre
  # an interrupt raised inside the user's function (as Ctrl-C there does)
  calls <- 0L
  g <- function(th) {
    calls <<- calls + 1L
    if (calls == k + 1L)
      signalCondition(structure(class = c("interrupt", "condition"), list(message = "", call = NULL)))
    -0.5 * sum(th^2)
  }
  ref <- seed_after(8, (k - pre + 1L) * d)
  set.seed(8)
  expect_error(vb_density(g, c(0.1, 0.2), gradient = function(th) -th, control = ctl,
                          init_method = "given"), "interrupted")
  expect_identical(seed_now(), ref)
})

test_that("NA and non-finite gradients are refused with an error naming 'gradient'", {
  ld <- function(th) -sum(th^2)
  for (bad in list(NA_integer_, NA, NaN, Inf)) {
    gr <- function(th) if (th[1] > 0.3) bad else -2 * th
    set.seed(3)
    expect_error(vb_density(ld, 0, gradient = gr, control = vb_control(quiet = TRUE)),
                 "'gradient' returned", info = format(bad))
  }
  # a draw where the log density itself is not finite is not the gradient's fault
  set.seed(3)
  fit <- vb_density(function(th) if (th > 4) -Inf else -sum(th^2), 0,
                    gradient = function(th) if (th > 4) NA_integer_ else -2 * th,
                    control = vb_control(quiet = TRUE))
  expect_identical(fit$status, 0L)
  expect_lt(abs(fit$vcov[1, 1] - 0.5), 0.05)
  # a gradient of the wrong type or length
  expect_error(vb_density(ld, 0, gradient = function(th) if (th > 0.3) "a" else -2 * th,
                          control = vb_control(quiet = TRUE)), "'gradient' must return")
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
  # C re-checks its arguments, and reads its settings by name
  tg <- list(type = "gauss", m = 0, A = matrix(1))
  op <- list(fullrank = TRUE, score = FALSE, samples = 1L)
  expect_error(.Call(vbayes:::C_sgvb_fit, tg, 0, matrix(1), NULL, as.double(1:14), op), "named list")
  expect_error(.Call(vbayes:::C_sgvb_fit, tg, 0, matrix(1), NULL, vb_control()[-11], op), "sgvb_maxit")
  expect_error(.Call(vbayes:::C_sgvb_fit, tg, 0, matrix(1), NULL, vb_control(), list(fullrank = TRUE)), "score")
  expect_error(.Call(vbayes:::C_sgvb_fit, tg, 0, matrix(1), NULL, vb_control(),
                     list(fullrank = TRUE, score = FALSE, samples = 0L)), "samples")
  expect_error(.Call(vbayes:::C_sgvb_fit, tg, 0, matrix(-1), NULL, vb_control(), op), "diagonal")
  expect_error(.Call(vbayes:::C_sgvb_fit, tg, 0, matrix(1), matrix(NaN), vb_control(), op), "pre")
  expect_error(.Call(vbayes:::C_sgvb_grad, list(type = "nope"), 0, matrix(1), op), "unknown")
  expect_error(.Call(vbayes:::C_sgvb_grad, list(type = "r", fn = 1, d = 1L), 0, matrix(1), op), "function")
  expect_error(.Call(vbayes:::C_sgvb_grad, list(type = "gauss", m = NA_real_, A = matrix(1)), 0, matrix(1), op),
               "finite")
})

test_that("GLM SGVB starts at the Laplace approximation without a step-size search or a Monte Carlo ELBO", {
  # issue 18: every gradient is a step of the run (no trial runs that first
  # move q away from the Laplace start), no value-only evaluations (the
  # closed-form ELBO replaces a Monte Carlo one), and the result is still
  # the CAVI optimum of the same family
  set.seed(32)
  n <- 400
  d <- data.frame(x = rnorm(n), z = rnorm(n))
  d$y <- rpois(n, exp(0.2 + 0.5 * d$x - 0.3 * d$z))
  for (ap in c("fullrank", "meanfield")) {
    f0 <- vb(y ~ x + z, data = d, family = poisson(), approx = ap)
    f1 <- vb(y ~ x + z, data = d, family = poisson(), approx = ap, method = "sgvb",
             control = vb_control(quiet = TRUE))
    expect_equal(f1$sgvb$n_grad, f1$iterations, label = ap)
    expect_equal(f1$sgvb$n_eval, 0, label = ap)
    expect_equal(f1$mc_se, 0)
    expect_lt(abs(elbo(f1) - elbo(f0)), 0.05, label = ap)
    expect_lt(elbo(f1), elbo(f0) + 1e-3) # the CAVI optimum is the family's optimum
  }
})

test_that("whitened fullrank and diagonal meanfield q recover a 60-d correlated Gaussian", {
  # the per-step O(d^2) / O(d) engine (q kept as pre Lt, or as its diagonal)
  # against closed forms: fullrank q = the target; meanfield q has the means
  # and the sds 1 / sqrt(A_jj) of the mean-field optimum
  set.seed(33)
  d <- 60
  S <- 0.8^abs(outer(1:d, 1:d, "-")) * outer(sqrt(1:d), sqrt(1:d))
  A <- solve(S)
  m <- seq(-3, 3, length.out = d)
  ld <- function(th) { g <- -drop(A %*% (th - m)); structure(0.5 * sum((th - m) * g), gradient = g) }
  fr <- vb_density(ld, init = rep(0, d), control = vb_control(quiet = TRUE))
  expect_true(fr$converged)
  expect_lt(max(abs(coef(fr) - m) / sqrt(diag(S))), 0.1)
  expect_lt(max(abs(sqrt(diag(vcov(fr))) / sqrt(diag(S)) - 1)), 0.05)
  logZ <- 0.5 * d * log(2 * pi) + 0.5 * determinant(S)$modulus[[1]]
  expect_lt(abs(elbo(fr) - logZ), 0.1)
  mf <- vb_density(ld, init = rep(0, d), approx = "meanfield", control = vb_control(quiet = TRUE))
  expect_true(mf$converged)
  expect_lt(max(abs(coef(mf) - m) / sqrt(diag(S))), 0.1)
  expect_lt(max(abs(sqrt(diag(vcov(mf))) * sqrt(diag(A)) - 1)), 0.05)
  L <- mf$unconstrained$L
  expect_equal(L[lower.tri(L)], rep(0, d * (d - 1) / 2))
})

# The Newton-like mode of the GLMs (issue 18) on a Gaussian target, called
# directly: pre is the Cholesky factor of A^{-1} (the curvature is exact).
fit_newton <- function(m, A, mu0, L0, fullrank, control = vb_control(quiet = TRUE), cv = TRUE) {
  .Call(vbayes:::C_sgvb_fit, gauss_target(m, A), as.double(mu0), L0, t(chol(solve(A))), control,
        list(fullrank = fullrank, score = FALSE, samples = 1L, final_elbo = FALSE, newton = TRUE,
             window = 5L, control_variate = cv))
}

test_that("Newton steps with control variates reach a Gaussian target's optimum exactly, in tens of steps", {
  set.seed(181)
  d <- 6
  B <- matrix(rnorm(d * d), d) / sqrt(d)
  A <- crossprod(B) + diag(d)
  S <- solve(A)
  m <- seq(-1, 1, length.out = d)
  logZ <- 0.5 * d * log(2 * pi) + 0.5 * determinant(S)$modulus[[1]]
  # fullrank: the optimum is the target itself; start 30% too wide and 2 sd away
  fr <- fit_newton(m, A, m + 2 * sqrt(diag(S)), 1.3 * t(chol(S)), TRUE)
  expect_identical(fr$status, 0L)
  expect_lt(fr$iterations, 100)
  expect_equal(fr$mu, m, tolerance = 1e-8)
  expect_equal(tcrossprod(fr$L), S, tolerance = 1e-8)
  # the per-step ELBO estimates have no noise left: each equals logZ
  expect_equal(tail(fr$trace, 5), rep(logZ, 5), tolerance = 1e-8)
  # meanfield: means m, sds 1 / sqrt(A_jj); ELBO logZ minus the closed-form KL
  # of the mean-field optimum, 1/2 (sum log A_jj - log det A)
  mf <- fit_newton(m, A, m - sqrt(diag(S)), diag(0.5 / sqrt(diag(A))), FALSE)
  expect_identical(mf$status, 0L)
  expect_lt(mf$iterations, 100)
  expect_equal(mf$mu, m, tolerance = 1e-8)
  expect_equal(diag(mf$L), 1 / sqrt(diag(A)), tolerance = 1e-8)
  kl_mf <- 0.5 * (sum(log(diag(A))) - determinant(A)$modulus[[1]])
  expect_equal(tail(mf$trace, 1), logZ - kl_mf, tolerance = 1e-8)
})

test_that("Newton steps that overshoot halve their size on a falling ELBO and still converge", {
  set.seed(182)
  d <- 4
  A <- diag(d) + 0.5
  m <- 1:d
  # a step of 3 times Newton's diverges (|1 - 3| > 1); the ELBO falls, the
  # step halves (1.5: converging) and the run restarts from the better window
  r <- fit_newton(m, A, rep(0, d), t(chol(solve(A))), TRUE,
                  control = vb_control(quiet = TRUE, step_size = 3))
  expect_identical(r$status, 0L)
  expect_gte(r$decays, 1L)
  expect_lt(r$eta, 3)
  expect_equal(r$mu, m, tolerance = 1e-6)
  # the same with mutated input: no preconditioner is an error, not a crash
  expect_error(.Call(vbayes:::C_sgvb_fit, gauss_target(m, A), rep(0, d), diag(d), NULL,
                     vb_control(quiet = TRUE),
                     list(fullrank = TRUE, score = FALSE, samples = 1L, newton = TRUE)), "pre")
  expect_error(.Call(vbayes:::C_sgvb_fit, gauss_target(m, A), rep(0, d), diag(d), diag(d),
                     vb_control(quiet = TRUE),
                     list(fullrank = TRUE, score = TRUE, samples = 2L, control_variate = TRUE)),
               "reparameterisation")
})

test_that("GLM SGVB matches CAVI's optimum (means and sds within 0.05 sd, ELBO within 0.01 nat) in few steps", {
  # issue 18: the CAVI optimum of each family is the reference (the ELBO of
  # a fit is in closed form at its q); a stochastic run may sit below it by
  # its averaging error only
  set.seed(183)
  n <- 3000
  X <- cbind(1, matrix(rnorm(n * 5), n) / sqrt(5))
  eta <- drop(X %*% c(-0.5, 0.6, -0.4, 0.3, 0, 0.2))
  ys <- list(poisson = rpois(n, exp(eta)), binomial = rbinom(n, 1, plogis(eta)))
  for (fam in names(ys)) for (ap in c("fullrank", "meanfield")) {
    f0 <- vb_fit(X, ys[[fam]], family = get(fam)(), approx = ap, control = vb_control(quiet = TRUE))
    set.seed(1)
    f1 <- vb_fit(X, ys[[fam]], family = get(fam)(), approx = ap, method = "sgvb",
                 control = vb_control(quiet = TRUE))
    info <- paste(fam, ap)
    sd0 <- sqrt(diag(vcov(f0)))
    expect_true(f1$converged, label = info)
    expect_lt(max(abs(coef(f1) - coef(f0)) / sd0), 0.05, label = info)
    expect_lt(max(abs(sqrt(diag(vcov(f1))) / sd0 - 1)), 0.05, label = info)
    expect_lt(elbo(f0) - elbo(f1), 0.01, label = info)
    expect_lt(elbo(f1), elbo(f0) + 1e-3, label = info)
    # cost: tens of one-draw steps (before issue 18: 600 fullrank, 4500 meanfield)
    expect_lt(f1$iterations, 200, label = info)
  }
  # the stopping rule stays honest: a run cut before its criterion is not converged
  expect_warning(f2 <- vb_fit(X, ys$poisson, family = poisson(), method = "sgvb",
                              control = vb_control(quiet = TRUE, sgvb_maxit = 12L)), "not converged")
  expect_false(f2$converged)
  expect_identical(f2$status, 1L)
})

test_that("mean-field GLM SGVB of a strongly correlated posterior still lands within 0.05 sd of CAVI", {
  # columns sharing a factor (correlation 0.95): the mean-field sds are far
  # below the posterior's, and three short batches of the final phase could
  # agree by chance; the stopping rule bounds the standard error of the
  # averaged iterates by their own autocorrelated variance as well
  set.seed(10)
  n <- 5000; p <- 10
  Z <- matrix(rnorm(n * (p - 1)), n)
  X <- cbind(1, sqrt(0.05) * Z + sqrt(0.95) * rnorm(n))
  y <- rpois(n, exp(drop(X %*% c(-1, rnorm(p - 1, 0, 0.3)))))
  f0 <- vb_fit(X, y, family = poisson(), approx = "meanfield", control = vb_control(quiet = TRUE))
  sd0 <- sqrt(diag(vcov(f0)))
  for (s in 1:3) {
    set.seed(s)
    f1 <- vb_fit(X, y, family = poisson(), approx = "meanfield", method = "sgvb",
                 control = vb_control(quiet = TRUE))
    expect_true(f1$converged)
    expect_lt(max(abs(coef(f1) - coef(f0)) / sd0), 0.05, label = paste("seed", s))
    expect_lt(max(abs(sqrt(diag(vcov(f1))) / sd0 - 1)), 0.05, label = paste("seed", s))
    expect_lt(elbo(f0) - elbo(f1), 0.01)
  }
})
