# vb_amortized(): references built independently of src/amortized.c —
# the pPCA evidence (dense MVN density), the ML pPCA solution (eigen of the
# sample covariance), Monte Carlo expectations, finite differences, and the
# GLM CAVI engine (vb_fit()) for the per-trial optimum.

quiet <- amortized_control(quiet = TRUE)

sim_ppca <- function(n, N, d, psi, C = matrix(rnorm(N * d), N), seed = 1) {
  set.seed(seed)
  dd <- rnorm(N)
  z <- matrix(rnorm(n * d), n)
  y <- z %*% t(C) + rep(dd, each = n) + matrix(rnorm(n * N, sd = sqrt(psi)), n)
  list(y = y, C = C, d = dd, psi = psi)
}

# log N(y_i; d, CC' + psi I) by a dense Cholesky
ppca_logev <- function(y, C, d, psi) {
  S <- tcrossprod(C) + diag(psi, nrow(C))
  R <- chol(S)
  -0.5 * (ncol(y) * log(2 * pi) + 2 * sum(log(diag(R))) +
            colSums(backsolve(R, t(y) - d, transpose = TRUE)^2))
}

sim_pois <- function(n, N, d, seed = 1, expo = 1) {
  set.seed(seed)
  C <- matrix(rnorm(N * d, sd = 0.5), N)
  dd <- rnorm(N, 0.5, 0.3)
  z <- matrix(rnorm(n * d), n)
  y <- matrix(rpois(n * N, expo * exp(z %*% t(C) + rep(dd, each = n))), n)
  list(y = y, C = C, d = dd)
}

test_that("pPCA with the decoder at the truth: a linear encoder reaches log p(y)", {
  # orthogonal loadings: the exact posterior covariance psi M^-1 is diagonal,
  # so the diagonal family contains it and ELBO = log p(y)
  N <- 6; d <- 2
  set.seed(10)
  C <- qr.Q(qr(matrix(rnorm(N * d), N))) %*% diag(c(2, 1))
  s <- sim_ppca(1000, N, d, 0.5, C = C, seed = 11)
  fit <- vb_amortized(s$y, d, decoder = "gaussian", encoder = mlp(hidden = integer(0)),
                      learn_decoder = FALSE, params = list(C = s$C, d = s$d, psi = s$psi),
                      noise = "isotropic", control = quiet)
  expect_true(fit$converged)
  le <- ppca_logev(s$y, s$C, s$d, s$psi)
  expect_lt(abs(mean(fit$elbo_trials - le)), 1e-3)
  expect_lt(max(abs(fit$elbo_trials - le)), 1e-3)
  expect_equal(fit$elbo, sum(le[fit$train]), tolerance = 1e-3 * length(fit$train) / abs(fit$elbo))
  # the same on held-out trials through elbo(fit, newdata)
  s2 <- sim_ppca(200, N, d, 0.5, C = C, seed = 12)
  s2$y <- s2$y - rep(s2$d, each = 200) + rep(s$d, each = 200)
  expect_lt(abs(elbo(fit, s2$y) - sum(ppca_logev(s2$y, s$C, s$d, s$psi))) / 200, 1e-3)
})

test_that("pPCA with general loadings: the ELBO is log p(y) minus the closed-form diagonal gap", {
  N <- 6; d <- 2
  s <- sim_ppca(1000, N, d, 0.5, seed = 2)
  fit <- vb_amortized(s$y, d, decoder = "gaussian", encoder = mlp(hidden = integer(0)),
                      learn_decoder = FALSE, params = list(C = s$C, d = s$d, psi = s$psi),
                      noise = "isotropic", control = quiet)
  P <- diag(d) + crossprod(s$C) / s$psi
  gap <- 0.5 * (sum(log(diag(P))) - as.numeric(determinant(P)$modulus))
  expect_gt(gap, 0.01)
  le <- ppca_logev(s$y, s$C, s$d, s$psi)
  expect_lt(max(abs(fit$elbo_trials - (le - gap))), 1e-3)
  # the posterior mean is the exact one, M^-1 C'(y - d), M = C'C + psi I
  M <- crossprod(s$C) + diag(s$psi, d)
  m_exact <- t(solve(M, t(s$C) %*% (t(s$y) - s$d)))
  expect_lt(max(abs(fit$posterior$mean - m_exact)), 1e-3)
  expect_lt(max(abs(fit$posterior$var - rep(1 / diag(P), each = 1000))), 1e-4)
  sm <- summary(fit, trials = 50, K = 0, refine = 1)
  expect_equal(sm$trials$approximation_gap, rep(gap, nrow(sm$trials)), tolerance = 1e-10)
  expect_equal(sm$trials$log_evidence, le[sm$trials$trial], tolerance = 1e-10)
})

test_that("pPCA with the decoder learned recovers the maximum-likelihood subspace and noise", {
  N <- 6; d <- 2; n <- 2000
  s <- sim_ppca(n, N, d, 0.3, seed = 3)
  set.seed(4)
  fit <- vb_amortized(s$y, d, decoder = "gaussian", encoder = mlp(hidden = integer(0)),
                      params = list(C = matrix(rnorm(N * d, sd = 0.3), N), d = rep(0, N), psi = 1),
                      noise = "isotropic", validation = 0,
                      control = amortized_control(patience = 20, quiet = TRUE))
  expect_true(fit$converged)
  e <- eigen(cov(s$y) * (n - 1) / n, symmetric = TRUE)
  U <- e$vectors[, 1:d]
  s2 <- mean(e$values[-(1:d)])
  angles <- acos(pmin(1, svd(crossprod(U, qr.Q(qr(fit$params$C))))$d)) * 180 / pi
  expect_lt(max(angles), 1)
  expect_equal(fit$params$psi, s2, tolerance = 0.01)
  Cml <- U %*% diag(sqrt(e$values[1:d] - s2))
  ll <- sum(ppca_logev(s$y, Cml, colMeans(s$y), s2))
  # the bound sits below the ML log-likelihood (the rotation that makes the
  # posterior diagonal is a nearly flat direction of the ELBO)
  expect_lt(abs(fit$elbo - ll) / n, 0.02)
  expect_lte(fit$elbo, ll + 1e-6)
})

test_that("the closed-form Poisson ELBO agrees with 10^6-draw Monte Carlo", {
  s <- sim_pois(3, 5, 2, seed = 5)
  set.seed(6)
  fit <- suppressWarnings(vb_amortized(s$y, 2, encoder = mlp(hidden = 4), learn_decoder = FALSE,
                      params = list(C = s$C, d = s$d), exposure = 0.8, validation = 0,
                      control = amortized_control(epochs = 2, quiet = TRUE)))
  m <- c(0.3, -0.2); v <- c(0.4, 0.7)
  y1 <- s$y[1, ]
  cf <- predict(fit, rbind(y1), exposure = 0.8, elbo = TRUE)
  r <- .Call(vbayes:::C_amortized_refine, vbayes:::fit_model_amz(fit, rbind(y1), log(0.8)), fit$theta,
             list(m = matrix(m), v = matrix(v), V = matrix(0, 0, 1)), list(steps = 0L, tol = 1e-8))
  S <- 1e6
  z <- matrix(m, S, 2, byrow = TRUE) + matrix(rnorm(2 * S), S) %*% diag(sqrt(v))
  eta <- z %*% t(s$C) + rep(s$d + log(0.8), each = S)
  lp <- drop(eta %*% y1) - rowSums(exp(eta)) - sum(lgamma(y1 + 1)) +
    rowSums(dnorm(z, log = TRUE)) - rowSums(dnorm(z, rep(m, each = S), rep(sqrt(v), each = S), log = TRUE))
  expect_lt(abs(mean(lp) - r$elbo_before), 4 * sd(lp) / sqrt(S))
  expect_true(is.finite(cf$elbo))
})

fd_check <- function(fit, y, off) {
  mod <- vbayes:::fit_model_amz(fit, y, off)
  set.seed(7)
  th <- fit$theta + rnorm(length(fit$theta), sd = 0.1)
  g <- .Call(vbayes:::C_amortized_eval, mod, th, list(grad = TRUE, draws = 0L))$grad
  f <- function(t) sum(.Call(vbayes:::C_amortized_eval, mod, t, list(grad = FALSE, draws = 0L))$elbo)
  fd <- vapply(seq_along(th), function(k) {
    h <- 1e-5 * max(1, abs(th[k]))
    a <- b <- th
    a[k] <- a[k] + h; b[k] <- b[k] - h
    (f(a) - f(b)) / (2 * h)
  }, 0)
  max(abs(fd - g)) / max(abs(g))
}

test_that("encoder and decoder gradients agree with finite differences", {
  s <- sim_pois(40, 6, 2, seed = 8)
  for (act in c("tanh", "softplus", "relu")) {
    fit <- suppressWarnings(vb_amortized(s$y, 2, encoder = mlp(hidden = c(5, 4), activation = act),
                        exposure = 0.5, control = amortized_control(epochs = 3, quiet = TRUE)))
    expect_lt(fd_check(fit, s$y[1:15, ], rep(log(0.5), 15)), 1e-6)
  }
  g <- sim_ppca(40, 5, 2, 0.4, seed = 9)
  for (nz in c("diagonal", "isotropic")) {
    fit <- suppressWarnings(vb_amortized(g$y, 2, decoder = "gaussian", noise = nz, encoder = mlp(hidden = 3),
                        control = amortized_control(epochs = 3, quiet = TRUE)))
    expect_lt(fd_check(fit, g$y[1:15, ], rep(0, 15)), 1e-6)
  }
  fit <- suppressWarnings(vb_amortized(g$y, 2, decoder = "gaussian", encoder = mlp(hidden = integer(0)),
                      control = amortized_control(epochs = 3, quiet = TRUE)))
  expect_lt(fd_check(fit, g$y[1:15, ], rep(0, 15)), 1e-6)
})

test_that("the reparameterised Monte Carlo gradient agrees with the closed form", {
  s <- sim_pois(10, 5, 2, seed = 19)
  for (dec in c("poisson", "gaussian")) {
    y <- if (dec == "poisson") s$y else log1p(s$y)
    fit <- suppressWarnings(vb_amortized(y, 2, decoder = dec, encoder = mlp(hidden = 3), validation = 0,
                                         control = amortized_control(epochs = 3, quiet = TRUE)))
    mod <- vbayes:::fit_model_amz(fit, y, rep(0, 10))
    cf <- .Call(vbayes:::C_amortized_eval, mod, fit$theta, list(grad = TRUE, draws = 0L))
    # 40 independent 2000-draw estimates: their mean against the closed form, in standard errors
    set.seed(20)
    reps <- replicate(40, {
      r <- .Call(vbayes:::C_amortized_eval, mod, fit$theta, list(grad = TRUE, draws = 2000L))
      c(sum(r$elbo), r$grad)
    })
    se <- apply(reps, 1, sd) / sqrt(40)
    z <- (rowMeans(reps) - c(sum(cf$elbo), cf$grad)) / se
    expect_lt(max(abs(z[se > 1e-12])), 5)
  }
  set.seed(21)
  f <- suppressWarnings(vb_amortized(s$y, 1, encoder = mlp(hidden = 3),
                                     control = amortized_control(epochs = 5, quiet = TRUE, estimator = "reparam")))
  expect_true(is.finite(f$elbo))
})

test_that("refinement reaches the per-trial CAVI optimum of vb_fit() to 1e-8", {
  s <- sim_pois(300, 8, 2, seed = 12)
  expo <- runif(300, 0.5, 1.5)
  set.seed(13)
  fit <- suppressWarnings(vb_amortized(s$y, 2, encoder = mlp(hidden = 8), exposure = expo,
                      control = amortized_control(epochs = 20, quiet = TRUE)))
  p0 <- predict(fit, s$y[1:10, ], exposure = expo[1:10], elbo = TRUE)
  p2 <- predict(fit, s$y[1:10, ], exposure = expo[1:10], refine = 2)
  p <- predict(fit, s$y[1:10, ], exposure = expo[1:10], refine = 100)
  expect_true(all(p2$elbo >= p0$elbo - 1e-10))
  expect_true(all(p$elbo >= p2$elbo - 1e-10))
  C <- fit$params$C
  colnames(C) <- c("z1", "z2")
  for (i in 1:10) {
    ref <- vb_fit(C, s$y[i, ], family = poisson(), offset = fit$params$d, exposure = expo[i],
                  prior = normal(0, 1), approx = "meanfield",
                  control = vb_control(tol = 1e-14, maxit = 5000, quiet = TRUE))
    expect_equal(p$elbo[i], ref$elbo, tolerance = 1e-8 / abs(ref$elbo))
    expect_equal(unname(p$mean[i, ]), unname(ref$coefficients), tolerance = 1e-5)
    expect_equal(unname(p$var[i, ]), unname(diag(ref$vcov)), tolerance = 1e-5)
  }
  sm <- summary(fit, trials = 30, K = 20)
  expect_true(all(sm$trials$amortization_gap > -1e-8))
  expect_true(all(sm$trials$gap_refined > -1e-8))
  expect_true(all(sm$trials$gap_refined <= sm$trials$amortization_gap + 1e-10))
  expect_true(all(sm$trials$approximation_gap > -1e-8))
  expect_gt(mean(sm$trials$iwae), mean(sm$trials$elbo_refined))
})

test_that("refinement of a gaussian decoder is exact in one Newton step", {
  s <- sim_ppca(300, 5, 2, 0.5, seed = 14)
  fit <- suppressWarnings(vb_amortized(s$y, 2, decoder = "gaussian", encoder = mlp(hidden = 3),
                      control = amortized_control(epochs = 5, quiet = TRUE)))
  pr <- fit$params
  p <- predict(fit, s$y[1:20, ], refine = 1)
  P <- diag(2) + crossprod(pr$C / pr$psi, pr$C)
  m <- t(solve(P, t(pr$C / pr$psi) %*% (t(s$y[1:20, ]) - pr$d)))
  expect_equal(unname(p$mean), m, tolerance = 1e-8)
  expect_equal(unname(p$var), matrix(1 / diag(P), 20, 2, byrow = TRUE), tolerance = 1e-8)
})

test_that("runs are reproducible under set.seed() and quiet silences progress", {
  s <- sim_pois(200, 6, 1, seed = 15)
  set.seed(1)
  out <- capture.output(f1 <- suppressWarnings(vb_amortized(s$y, 1, encoder = mlp(hidden = 4),
                                                            control = amortized_control(epochs = 20, quiet = TRUE))))
  expect_length(out, 0L)
  set.seed(1)
  f2 <- suppressWarnings(vb_amortized(s$y, 1, encoder = mlp(hidden = 4), control = list(epochs = 20, quiet = TRUE)))
  expect_identical(f1$theta, f2$theta)
  expect_identical(f1$validation, f2$validation)
  expect_false(f1$converged) # 20 epochs are not enough: a warning says so
  expect_warning(vb_amortized(s$y, 1, encoder = mlp(hidden = 4), control = amortized_control(epochs = 2, quiet = TRUE)),
                 "not converged.*amortized_control\\(epochs\\)")
})

test_that("methods: coef, elbo with newdata, plot, compare_models across latent dimensions", {
  s <- sim_pois(400, 8, 2, seed = 16)
  set.seed(2)
  f1 <- suppressWarnings(vb_amortized(s$y, 1, encoder = mlp(hidden = 8), control = amortized_control(epochs = 40, quiet = TRUE)))
  set.seed(2)
  f2 <- suppressWarnings(vb_amortized(s$y, 2, encoder = mlp(hidden = 8), control = amortized_control(epochs = 40, quiet = TRUE)))
  expect_equal(dim(coef(f2)), c(8L, 3L))
  expect_equal(elbo(f1), sum(f1$elbo_trials[f1$train]))
  nd <- s$y[1:7, ]
  expect_equal(elbo(f1, nd), sum(predict(f1, nd, elbo = TRUE)$elbo))
  expect_gte(elbo(f1, nd, refine = 3), elbo(f1, nd))
  cmp <- compare_models(one = f1, two = f2)
  expect_equal(cmp$elbo, c(f1$elbo, f2$elbo))
  pdf(NULL)
  on.exit(dev.off())
  expect_s3_class(plot(f2), "data.frame")
  expect_equal(nrow(plot(f2, which = "latent")), 400L)
  expect_equal(nrow(plot(f1, which = "latent")), 400L)
  expect_output(print(f2), "Amortized")
  expect_output(print(summary(f2, trials = 10, K = 5)), "amortization gap")
})

test_that("bad input gets a clear error", {
  s <- sim_pois(50, 5, 1, seed = 17)
  y <- s$y
  expect_error(vb_amortized(replace(y, 3, NA), 1), "NA.*drop or impute")
  expect_error(vb_amortized(replace(y, 3, -1), 1), "counts")
  expect_error(vb_amortized(replace(y, 3, 0.5), 1), "counts")
  expect_error(vb_amortized(y, 5), "smaller than the number of units")
  expect_error(vb_amortized(y, 0), "latent_dim")
  expect_error(vb_amortized(y[1, , drop = FALSE], 1), "one trial")
  expect_error(vb_amortized(y, 1, exposure = c(Inf, rep(1, 49))), "exposure")
  expect_error(vb_amortized(y, 1, exposure = NA), "exposure")
  expect_error(vb_amortized(y, 1, exposure = rep(1, 3)), "exposure")
  expect_error(vb_amortized(y + 0.5, 1, decoder = "gaussian", exposure = 1), "exposure")
  expect_error(vb_amortized(y, 1, learn_decoder = FALSE), "params")
  expect_error(vb_amortized(y, 1, params = list(C = matrix(0, 2, 1))), "params\\$C")
  expect_error(vb_amortized(y, 1, validation = -0.1), "fraction")
  expect_error(vb_amortized(y, 1, validation = 0.95), "90%")
  expect_error(vb_amortized(y, 1, validation = 1:50), "no training")
  expect_error(vb_amortized(y, 1, encoder = list()), "mlp")
  expect_error(mlp(hidden = -1), "hidden")
  expect_error(amortized_control(batch_size = 0), "batch_size")
  f <- suppressWarnings(vb_amortized(y, 1, encoder = mlp(hidden = 2), control = amortized_control(epochs = 2, quiet = TRUE)))
  expect_error(predict(f, y[, 1:3]), "units")
  expect_error(predict(f, y, refine = -1), "refine")
  expect_error(predict(f, replace(y, 2, NA)), "NA")
})

test_that("training can be interrupted", {
  skip_on_cran()
  s <- sim_pois(20000, 50, 3, seed = 18)
  lat <- interrupt_latency(vb_amortized(s$y, 3, encoder = mlp(hidden = c(64, 64)),
                                        control = amortized_control(epochs = 1e5, decays = 1000, quiet = TRUE)),
                           after = 1.5)
  skip_if(is.na(lat))
  expect_match(attr(lat, "how"), "interrupt")
  expect_lt(lat, 1)
})

# ---- low-rank-plus-diagonal covariance ---------------------------------------

# KL(N(m*, Sigma) || N(m*, P^-1)) = 1/2 (tr(P Sigma) - d - log|P| - log|Sigma|)
# for Sigma = diag(D) + V V' (rank r) as a function of (log D, V), with its
# gradient (dKL/dSigma = (P - Sigma^-1) / 2), for optim()
lowrank_kl <- function(P, r) {
  d <- nrow(P)
  sig <- function(par) diag(exp(par[1:d]), d) + tcrossprod(matrix(par[-(1:d)], d, r))
  list(f = function(par) {
    S <- sig(par)
    0.5 * (sum(P * S) - d - as.numeric(determinant(P)$modulus) - as.numeric(determinant(S)$modulus))
  }, g = function(par) {
    G <- 0.5 * (P - solve(sig(par)))
    c(exp(par[1:d]) * diag(G), 2 * G %*% matrix(par[-(1:d)], d, r))
  })
}
lowrank_opt <- function(P, r, start) {
  k <- lowrank_kl(P, r)
  o <- optim(start, k$f, k$g, method = "BFGS", control = list(reltol = 1e-16, maxit = 1e4))
  o <- optim(o$par, k$f, k$g, method = "BFGS", control = list(reltol = 1e-16, maxit = 1e4))
  o$value
}
# the global minimum: the best of several starts
lowrank_kl_min <- function(P, r) {
  d <- nrow(P)
  set.seed(99)
  min(vapply(1:5, function(k) lowrank_opt(P, r, c(rep(log(0.5), d), rnorm(d * r, sd = 0.3))), 0))
}

test_that("pPCA, correlated posterior: a rank-1 low-rank encoder reaches log p(y) where the diagonal one cannot", {
  N <- 6; d <- 2
  s <- sim_ppca(1000, N, d, 0.5, seed = 2) # general loadings: the posterior is correlated
  P <- diag(d) + crossprod(s$C) / s$psi
  gap <- 0.5 * (sum(log(diag(P))) - as.numeric(determinant(P)$modulus))
  expect_gt(gap, 0.01)
  le <- ppca_logev(s$y, s$C, s$d, s$psi)
  pr <- list(C = s$C, d = s$d, psi = s$psi)
  set.seed(3)
  fl <- vb_amortized(s$y, d, decoder = "gaussian", encoder = mlp(hidden = integer(0), covariance = "lowrank", rank = 1),
                     learn_decoder = FALSE, params = pr, noise = "isotropic", control = quiet)
  expect_true(fl$converged)
  # d = 2, rank 1: the family holds every 2 x 2 covariance, so ELBO = log p(y)
  expect_lt(max(abs(fl$elbo_trials - le)), 1e-3)
  p <- predict(fl, s$y[1:5, ])
  S <- diag(p$cov_diag[1, ]) + tcrossprod(p$cov_factor[1, , ])
  expect_equal(S, solve(P), tolerance = 1e-3)
  expect_equal(unname(p$var[1, ]), diag(solve(P)), tolerance = 1e-3)
  # IWAE with the exact posterior as proposal: every weight is p(y), so IWAE = log p(y)
  sm <- summary(fl, trials = 20, K = 50, refine = 2)
  expect_equal(sm$trials$iwae, le[sm$trials$trial], tolerance = 1e-6)
  expect_lt(max(abs(sm$trials$approximation_gap)), 1e-8)
  expect_equal(sm$trials$approximation_gap_diagonal, rep(gap, 40), tolerance = 1e-8)
})

test_that("pPCA, d = 3: the low-rank gap lies between the family's optimum and the diagonal gap", {
  N <- 7; d <- 3
  set.seed(30)
  C <- matrix(rnorm(N * d), N) %*% matrix(c(1, 0.8, 0.6, 0, 0.6, 0.5, 0, 0, 0.4), 3)
  s <- sim_ppca(600, N, d, 0.4, C = C, seed = 31)
  P <- diag(d) + crossprod(s$C) / s$psi
  gap_diag <- 0.5 * (sum(log(diag(P))) - as.numeric(determinant(P)$modulus))
  gap_lr <- lowrank_kl_min(P, 1) # global optimum of the rank-1 family (optim, restarts)
  expect_gt(gap_lr, 1e-3)
  expect_lt(gap_lr, gap_diag / 2)
  le <- ppca_logev(s$y, s$C, s$d, s$psi)
  set.seed(32)
  fl <- vb_amortized(s$y, d, decoder = "gaussian", encoder = mlp(hidden = integer(0), covariance = "lowrank", rank = 1),
                     learn_decoder = FALSE, params = list(C = s$C, d = s$d, psi = s$psi), noise = "isotropic",
                     control = quiet)
  expect_true(fl$converged)
  gap_fit <- le - fl$elbo_trials
  expect_true(all(gap_fit > gap_lr - 1e-8))
  expect_lt(max(gap_fit), gap_diag - 0.05)
  # KL(q || p(z | y)) of a rank-1 q has local optima: refinement run to
  # convergence reaches the one optim() finds from the same start (here with
  # one D_k on the boundary 0, which both approach only slowly in log D:
  # hence 1e-6, not 1e-9)
  p0 <- predict(fl, s$y[1:5, ])
  p <- predict(fl, s$y[1:5, ], refine = 500)
  for (i in 1:5) {
    kmin <- lowrank_opt(P, 1, c(log(p0$cov_diag[i, ]), p0$cov_factor[i, , ]))
    expect_equal(p$elbo[i], le[i] - kmin, tolerance = 1e-6)
  }
  sm <- summary(fl, trials = 10, K = 0)
  expect_true(all(sm$trials$approximation_gap > gap_lr - 1e-8))
  expect_true(all(sm$trials$approximation_gap < gap_diag - 0.05))
  expect_equal(sm$trials$approximation_gap_diagonal, rep(gap_diag, 20), tolerance = 1e-8)
})

test_that("low-rank gradients agree with finite differences", {
  s <- sim_pois(40, 6, 3, seed = 8)
  for (rk in 1:3) {
    set.seed(rk)
    fit <- suppressWarnings(vb_amortized(s$y, 3, encoder = mlp(hidden = c(5, 4), covariance = "lowrank", rank = rk),
                                         exposure = 0.5, control = amortized_control(epochs = 3, quiet = TRUE)))
    expect_lt(fd_check(fit, s$y[1:15, ], rep(log(0.5), 15)), 1e-6)
  }
  g <- sim_ppca(40, 5, 2, 0.4, seed = 9)
  for (nz in c("diagonal", "isotropic")) {
    fit <- suppressWarnings(vb_amortized(g$y, 2, decoder = "gaussian", noise = nz,
                                         encoder = mlp(hidden = 3, covariance = "lowrank", rank = 2),
                                         control = amortized_control(epochs = 3, quiet = TRUE)))
    expect_lt(fd_check(fit, g$y[1:15, ], rep(0, 15)), 1e-6)
  }
})

test_that("the closed-form low-rank Poisson ELBO agrees with 10^6-draw Monte Carlo", {
  s <- sim_pois(3, 5, 2, seed = 5)
  set.seed(6)
  fit <- suppressWarnings(vb_amortized(s$y, 2, encoder = mlp(hidden = 4, covariance = "lowrank", rank = 1),
                                       learn_decoder = FALSE, params = list(C = s$C, d = s$d), validation = 0,
                                       control = amortized_control(epochs = 2, quiet = TRUE)))
  m <- c(0.3, -0.2); D <- c(0.4, 0.2); V <- c(0.5, -0.6)
  Sig <- diag(D) + tcrossprod(V)
  y1 <- s$y[1, ]
  r <- .Call(vbayes:::C_amortized_refine, vbayes:::fit_model_amz(fit, rbind(y1), 0), fit$theta,
             list(m = matrix(m), v = matrix(D), V = matrix(V)), list(steps = 0L, tol = 1e-8))
  S <- 1e6
  set.seed(7)
  z <- matrix(m, S, 2, byrow = TRUE) + matrix(rnorm(2 * S), S) %*% chol(Sig)
  eta <- z %*% t(s$C) + rep(s$d, each = S)
  Si <- solve(Sig)
  zc <- sweep(z, 2, m)
  lq <- -log(2 * pi) - 0.5 * as.numeric(determinant(Sig)$modulus) - 0.5 * rowSums((zc %*% Si) * zc)
  lp <- drop(eta %*% y1) - rowSums(exp(eta)) - sum(lgamma(y1 + 1)) + rowSums(dnorm(z, log = TRUE)) - lq
  expect_lt(abs(mean(lp) - r$elbo_before), 4 * sd(lp) / sqrt(S))
})

test_that("low-rank refinement with rank = latent_dim reaches the full-rank CAVI optimum of vb_fit()", {
  s <- sim_pois(300, 8, 2, seed = 12)
  set.seed(13)
  fit <- suppressWarnings(vb_amortized(s$y, 2, encoder = mlp(hidden = 8, covariance = "lowrank", rank = 2),
                                       control = amortized_control(epochs = 20, quiet = TRUE)))
  p0 <- predict(fit, s$y[1:8, ], elbo = TRUE)
  p2 <- predict(fit, s$y[1:8, ], refine = 2)
  p <- predict(fit, s$y[1:8, ], refine = 200)
  expect_true(all(p2$elbo >= p0$elbo - 1e-10))
  expect_true(all(p$elbo >= p2$elbo - 1e-10))
  C <- fit$params$C
  colnames(C) <- c("z1", "z2")
  for (i in 1:8) {
    ref <- vb_fit(C, s$y[i, ], family = poisson(), offset = fit$params$d, prior = normal(0, 1), approx = "fullrank",
                  control = vb_control(tol = 1e-14, maxit = 5000, quiet = TRUE))
    expect_equal(p$elbo[i], ref$elbo, tolerance = 1e-8 / abs(ref$elbo))
    expect_equal(unname(p$mean[i, ]), unname(ref$coefficients), tolerance = 1e-5)
    S <- diag(p$cov_diag[i, ]) + tcrossprod(p$cov_factor[i, , ])
    expect_equal(S, unname(ref$vcov), tolerance = 1e-5)
  }
})

test_that("the encoder-only prediction path (C) agrees with the ELBO path (R transforms)", {
  s <- sim_pois(300, 7, 2, seed = 40)
  for (enc in list(mlp(hidden = 6), mlp(hidden = c(5, 3), activation = "relu", transform = "sqrt"),
                   mlp(hidden = 4, covariance = "lowrank", rank = 1, activation = "softplus"))) {
    set.seed(41)
    fit <- suppressWarnings(vb_amortized(s$y, 2, encoder = enc, control = amortized_control(epochs = 10, quiet = TRUE)))
    yi <- s$y[1:50, ]
    storage.mode(yi) <- "integer"
    a <- predict(fit, yi)
    b <- predict(fit, s$y[1:50, ], elbo = TRUE)
    expect_equal(a$mean, b$mean, tolerance = 1e-12)
    expect_equal(a$var, b$var, tolerance = 1e-12)
    expect_equal(a$cov_factor, b$cov_factor, tolerance = 1e-12)
    expect_null(a$elbo)
  }
  y <- s$y[1:5, ] + 1000 # beyond the table of transformed counts
  expect_equal(predict(fit, y)$mean, predict(fit, y, elbo = TRUE)$mean, tolerance = 1e-12)
  expect_error(predict(fit, replace(s$y, 7, NA)), "NA")
  expect_error(predict(fit, replace(s$y, 7, -2)), "counts")
  expect_error(predict(fit, replace(s$y, 7, 2.5)), "counts")
  expect_error(predict(fit, replace(s$y, 7, Inf)), "infinite")
  expect_error(predict(fit, s$y, elbo = NA), "elbo")
  expect_error(predict(fit, s$y, exposure = -1), "exposure")
})

test_that("stopping checks every check_every minibatches when a pass is longer", {
  s <- sim_pois(2000, 6, 1, seed = 42)
  set.seed(43)
  fit <- suppressWarnings(vb_amortized(s$y, 1, encoder = mlp(hidden = 4),
                                       control = amortized_control(batch_size = 32, check_every = 14, quiet = TRUE)))
  # 1800 training trials: 56 minibatches per pass, a check every 14 = a quarter pass
  expect_equal(fit$trace$epoch[1:3], c(0.25, 0.5, 0.75))
  expect_equal(fit$epochs, max(fit$trace$epoch))
  expect_true(fit$converged)
})

test_that("low-rank input errors", {
  s <- sim_pois(50, 5, 1, seed = 17)
  expect_error(mlp(covariance = "lowrank", rank = 0), "rank")
  expect_error(mlp(covariance = "lowrank", rank = NA), "rank")
  expect_error(vb_amortized(s$y, 1, encoder = mlp(hidden = 2, covariance = "lowrank", rank = 2)), "rank")
  expect_error(vb_amortized(s$y, 2, encoder = mlp(hidden = 2, covariance = "lowrank"),
                            control = amortized_control(estimator = "reparam")), "diagonal")
  expect_error(amortized_control(check_every = 0), "check_every")
})

test_that("the forward pass agrees with an MLP written in R (tanh, relu, softplus)", {
  s <- sim_pois(200, 6, 2, seed = 44)
  for (act in c("tanh", "relu", "softplus")) {
    set.seed(45)
    fit <- suppressWarnings(vb_amortized(s$y, 2, encoder = mlp(hidden = c(7, 5), activation = act, covariance = "lowrank"),
                                         control = amortized_control(epochs = 5, quiet = TRUE)))
    f <- switch(act, tanh = tanh, relu = function(x) pmax(x, 0), softplus = function(x) log1p(exp(x)))
    sz <- fit$model_info$sizes
    inp <- fit$model_info$input
    h <- t(sweep(sweep(log1p(s$y[1:30, ]), 2, inp$center), 2, inp$scale, "/"))
    th <- fit$theta
    o <- 0
    for (l in seq_len(length(sz) - 1)) {
      W <- matrix(th[o + seq_len(sz[l + 1] * sz[l])], sz[l + 1]); o <- o + sz[l + 1] * sz[l]
      b <- th[o + seq_len(sz[l + 1])]; o <- o + sz[l + 1]
      h <- W %*% h + b
      if (l < length(sz) - 1) h <- f(h)
    }
    p <- predict(fit, s$y[1:30, ])
    expect_equal(unname(p$mean), t(h[1:2, ]), tolerance = 1e-13)
    expect_equal(unname(p$cov_diag), t(exp(h[3:4, ])), tolerance = 1e-13)
    expect_equal(unname(p$cov_factor[, , 1]), t(h[5:6, ]), tolerance = 1e-13)
    expect_equal(unname(p$var), t(exp(h[3:4, ]) + h[5:6, ]^2), tolerance = 1e-13)
  }
})
