# vb_lds(): every check is against a dense (Td x Td) computation, quadrature,
# importance sampling, KFAS, or the simulation truth.

quiet <- function(...) vb_control(quiet = TRUE, ...)

test_that("gaussian structured q is the exact posterior and its ELBO the log-likelihood", {
  p <- lds_test_params(2, 4, seed = 1)
  set.seed(11)
  y <- vbayes:::lds_sim(p, 9, "gaussian")
  fit <- vb_lds(y, 2, params = p, learn = FALSE, control = quiet())
  expect_close(fit$elbo, lds_dense_loglik(p, y), 1e-6)
  post <- lds_dense_posterior(p, y)
  po <- fit$posterior[[1]]
  expect_close(as.vector(t(po$mean)), post$mean, 1e-8)
  expect_close(po$cov, lds_blocks(post$Sigma, 2, 9), 1e-8)
  expect_close(po$cross[, , -1], lds_blocks(post$Sigma, 2, 9, lag = 1), 1e-8)
  expect_close(po$logdet, -as.numeric(determinant(post$Lam)$modulus), 1e-8)
  # several trials add up; a 1-bin trial works
  y2 <- vbayes:::lds_sim(p, 1, "gaussian")
  f2 <- vb_lds(list(y, y2), 2, params = p, learn = FALSE, control = quiet())
  expect_close(f2$elbo, lds_dense_loglik(p, y) + lds_dense_loglik(p, y2), 1e-6)
})

test_that("missing bins are marginalised exactly", {
  p <- lds_test_params(2, 4, seed = 2)
  set.seed(12)
  y <- vbayes:::lds_sim(p, 8, "gaussian")
  y[3, 2] <- NA; y[5, ] <- NA
  fit <- vb_lds(y, 2, params = p, learn = FALSE, control = quiet())
  expect_close(fit$elbo, lds_dense_loglik(p, y), 1e-6)
  post <- lds_dense_posterior(p, y)
  expect_close(as.vector(t(fit$posterior[[1]]$mean)), post$mean, 1e-8)
})

test_that("gaussian log-likelihood agrees with KFAS", {
  skip_if_not_installed("KFAS")
  p <- lds_test_params(2, 5, seed = 3)
  set.seed(13)
  y <- vbayes:::lds_sim(p, 40, "gaussian")
  fit <- vb_lds(y, 2, params = p, learn = FALSE, control = quiet())
  # KFAS recognises the special only by its bare name
  SSMcustom <- KFAS::SSMcustom
  yc <- sweep(y, 2, p$d); Zm <- p$C; Tm <- p$A; Qm <- p$Q; a1 <- p$m0; P1 <- p$V0; Hm <- diag(p$R)
  mod <- KFAS::SSModel(yc ~ -1 + SSMcustom(Z = Zm, T = Tm, R = diag(2), Q = Qm, a1 = a1, P1 = P1),
                       H = Hm)
  expect_close(fit$elbo, as.numeric(logLik(mod)), 1e-6)
  ks <- KFAS::KFS(mod, smoothing = "state", filtering = "none")
  expect_close(unclass(fit$posterior[[1]]$mean), unname(unclass(ks$alphahat)),
               1e-7)
})

test_that("meanfield loses exactly the KL of the dense meanfield optimum", {
  p <- lds_test_params(2, 4, seed = 4)
  set.seed(14)
  T <- 12
  y <- vbayes:::lds_sim(p, T, "gaussian")
  st <- vb_lds(y, 2, params = p, learn = FALSE, control = quiet())
  mf <- vb_lds(y, 2, params = p, learn = FALSE, approx = "meanfield",
               control = quiet(maxit = 5000, tol = 1e-15))
  post <- lds_dense_posterior(p, y)
  # the meanfield optimum of a gaussian target: exact means, S_t = (Lambda_tt)^{-1};
  # its KL to the posterior is (sum_t log|Lambda_tt| - log|Lambda|) / 2
  Ltt <- lds_blocks(post$Lam, 2, T)
  gap <- 0.5 * (sum(apply(Ltt, 3, function(B) as.numeric(determinant(B)$modulus))) -
                  as.numeric(determinant(post$Lam)$modulus))
  expect_gt(gap, 0.1)
  expect_lt(mf$elbo, st$elbo)
  expect_close(st$elbo - mf$elbo, gap, 1e-8)
  expect_close(as.vector(t(mf$posterior[[1]]$mean)), post$mean, 1e-6)
  expect_close(mf$posterior[[1]]$cov, array(apply(Ltt, 3, solve), dim(Ltt)), 1e-10)
})

test_that("poisson structured fixed point equals the dense Gaussian VA", {
  p <- lds_test_params(2, 5, seed = 3); p$d <- p$d + 1
  T <- 10
  set.seed(5)
  y <- vbayes:::lds_sim(p, T, "poisson", 0.5)
  fit <- vb_lds(y, 2, family = poisson(), params = p, learn = FALSE, exposure = 0.5,
                control = quiet(tol = 1e-15))
  expect_true(fit$converged)
  # the same model as a dense poisson GLM in the whitened coordinates u, z = mu + U'u,
  # u ~ N(0, I), fitted by the package's dense full-covariance GVA engine
  pr <- lds_dense_prior(p, T); X <- lds_dense_design(p, T)
  U <- chol(pr$Sigma)
  Xu <- X %*% t(U); colnames(Xu) <- paste0("u", seq_len(ncol(Xu)))
  off <- rep(p$d, T) + log(0.5) + drop(X %*% pr$mu)
  # (the reference to machine precision: at tol = 1e-15 a fullrank fit stops once the gain
  # a further step predicts is below 1e-15 |ELBO|, which leaves the means ~1e-8 off)
  g <- vb_fit(Xu, as.vector(t(y)), family = poisson(), offset = off, prior = normal(0, 1),
              approx = "fullrank", control = quiet(tol = 1e-20, maxit = 1000))
  expect_true(g$converged)
  mz <- pr$mu + drop(t(U) %*% g$coefficients); Sz <- t(U) %*% g$vcov %*% U
  expect_close(fit$elbo, g$elbo, 1e-8)
  expect_close(as.vector(t(fit$posterior[[1]]$mean)), mz, 1e-8)
  expect_close(fit$posterior[[1]]$cov, lds_blocks(Sz, 2, T), 1e-8)
  expect_close(fit$posterior[[1]]$cross[, , -1], lds_blocks(Sz, 2, T, 1), 1e-8)
  # meanfield is a lower bound below it
  mf <- vb_lds(y, 2, family = poisson(), params = p, learn = FALSE, exposure = 0.5,
               approx = "meanfield", control = quiet(tol = 1e-15, maxit = 5000))
  expect_lt(mf$elbo, fit$elbo)
  # meanfield optimum, checked densely (the ELBO is stationary there, so at tol = 1e-15 on
  # the ELBO the residuals of the stationarity equations are about 1e-7): for every t,
  # S_t^{-1} = Lambda0_tt + C'W_tC and C'(y_t - w_t) = [Lambda0 (m - mu0)]_t, with
  # w_ti = 0.5 exp(c_i'm_t + d_i + c_i'S_t c_i / 2)
  po <- mf$posterior[[1]]; m <- as.vector(t(po$mean))
  g <- drop(pr$Lam %*% (m - pr$mu))
  for (t in 1:T) {
    St <- po$cov[, , t]; mt <- po$mean[t, ]
    w <- 0.5 * exp(drop(p$C %*% mt) + p$d + 0.5 * rowSums((p$C %*% St) * p$C))
    ix <- (t - 1) * 2 + 1:2
    expect_close(solve(St), pr$Lam[ix, ix] + t(p$C) %*% (w * p$C), 1e-6)
    expect_close(drop(crossprod(p$C, y[t, ] - w)), g[ix], 1e-6)
  }
})

# The meanfield optimum by the joint steps (default) and by plain coordinate ascent
# (joint_means = 0), both run to tol = 1e-14; and the reference: plain coordinate
# ascent run on for up to 20 times as many sweeps (it converges linearly, so a criterion
# on the ELBO change stops it while its means are still about 1e-6 away).
lds_mf_pair <- function(y, p, family = gaussian(), exposure = NULL) {
  f <- function(j, tol = 1e-14, maxit = 20000)
    vb_lds(y, 2, family = family, params = p, learn = FALSE, exposure = exposure,
           approx = "meanfield", control = quiet(tol = tol, maxit = maxit, joint_means = j))
  out <- list(joint = f(500L), plain = f(0L))
  # (it stops early, converged, only where a sweep leaves the ELBO exactly unchanged)
  out$ref <- suppressWarnings(f(0L, 1e-300, 20L * out$plain$iterations))
  expect_true(out$ref$status %in% 0:1)
  out
}

expect_mf_agree <- function(pr, max_ratio = 1 / 10) {
  a <- pr$joint; b <- pr$plain; r <- pr$ref
  expect_true(a$converged); expect_true(b$converged)
  expect_close(a$elbo, r$elbo, 1e-8)
  expect_close(b$elbo, r$elbo, 1e-8)
  for (k in seq_along(a$posterior)) {
    expect_close(a$posterior[[k]]$mean, r$posterior[[k]]$mean, 1e-6)
    expect_close(a$posterior[[k]]$cov, r$posterior[[k]]$cov, 1e-6)
    expect_close(a$posterior[[k]]$cross, 0, 0)
  }
  expect_lte(a$iterations, max_ratio * b$iterations)
  # the traces: one value per iteration, never decreasing, ending at the ELBO
  for (f in list(a, b, r)) {
    expect_length(f$elbo_trace, f$iterations)
    expect_true(all(diff(f$elbo_trace) >= -1e-10 * (1 + abs(f$elbo))))
    expect_equal(f$elbo_trace[f$iterations], f$elbo, tolerance = 1e-14)
  }
}

test_that("meanfield joint steps reach the coordinate-ascent optimum in far fewer iterations: gaussian", {
  p <- lds_test_params(2, 4, seed = 4)
  set.seed(14)
  T <- 30
  y <- vbayes:::lds_sim(p, T, "gaussian")
  pr <- lds_mf_pair(y, p)
  expect_mf_agree(pr)
  # given the variances the means solve a linear system, so the joint steps are exact
  # after one iteration (the others confirm it)
  expect_lte(pr$joint$iterations, 3)
  # and against the dense meanfield optimum: exact posterior means, S_t = (Lambda_tt)^{-1},
  # ELBO = log p(y) - (sum_t log|Lambda_tt| - log|Lambda|) / 2
  post <- lds_dense_posterior(p, y)
  Ltt <- lds_blocks(post$Lam, 2, T)
  gap <- 0.5 * (sum(apply(Ltt, 3, function(B) as.numeric(determinant(B)$modulus))) -
                  as.numeric(determinant(post$Lam)$modulus))
  expect_close(pr$joint$elbo, lds_dense_loglik(p, y) - gap, 1e-8)
  expect_close(as.vector(t(pr$joint$posterior[[1]]$mean)), post$mean, 1e-9)
  expect_close(pr$joint$posterior[[1]]$cov, array(apply(Ltt, 3, solve), dim(Ltt)), 1e-10)
  # missing bins and two trials
  y[4, 2] <- NA; y[7, ] <- NA
  y2 <- vbayes:::lds_sim(p, 9, "gaussian")
  expect_mf_agree(lds_mf_pair(list(y, y2), p))
})

test_that("meanfield joint steps reach the coordinate-ascent optimum in far fewer iterations: poisson", {
  p <- lds_test_params(2, 5, seed = 3); p$d <- p$d + 1
  set.seed(5)
  y <- vbayes:::lds_sim(p, 60, "poisson", 0.5)
  expect_mf_agree(lds_mf_pair(y, p, poisson(), 0.5))
  # high rates (the full step overshoots from the prior start), missing counts, two
  # trials with per-bin exposures
  p$d <- p$d + 2
  ex <- list(runif(80, 0.5, 1.5), rep(1, 25))
  Y <- list(vbayes:::lds_sim(p, 80, "poisson", ex[[1]]), vbayes:::lds_sim(p, 25, "poisson", 1))
  Y[[1]][c(3, 50, 51), 2] <- NA; Y[[2]][5, ] <- NA
  pr <- lds_mf_pair(Y, p, poisson(), ex)
  expect_gt(mean(unlist(Y), na.rm = TRUE), 20)
  # the data dominate the dynamics here, so coordinate ascent is quicker
  expect_mf_agree(pr, max_ratio = 1 / 2)
})

test_that("meanfield status is honest: maxit is not converged, for joint steps and sweeps", {
  p <- lds_test_params(2, 5, seed = 3)
  set.seed(7)
  y <- vbayes:::lds_sim(p, 50, "poisson")
  storage.mode(y) <- "double"
  for (j in c(500L, 0L)) {
    expect_warning(f <- vb_lds(y, 2, family = poisson(), params = p, learn = FALSE,
                               approx = "meanfield",
                               control = quiet(maxit = 2, tol = 1e-14, joint_means = j)),
                   "not converged after 2")
    expect_identical(f$status, 1L); expect_false(f$converged)
    expect_identical(f$iterations, 2L); expect_length(f$elbo_trace, 2)
    # and continuing: the E-step alone (the .Call) from the q it left
    fam <- vbayes:::family_code(poisson())
    e <- .Call(vbayes:::C_lds_estep, y, rep(0, 50), fam, f$params,
               list(m = t(f$posterior[[1]]$mean), S = f$posterior[[1]]$cov), 1L,
               quiet(maxit = 1000, tol = 1e-14, joint_means = j))
    expect_identical(e$status, 0L); expect_true(e$converged)
    expect_gt(e$elbo, f$elbo); expect_gte(e$trace[1], f$elbo)
  }
  # progress lines from inside the E-step unless quiet
  old <- options(vbayes.progress_interval = 0); on.exit(options(old))
  expect_message(vb_lds(y, 2, family = poisson(), params = p, learn = FALSE, approx = "meanfield",
                        control = vb_control(maxit = 50)),
                 "meanfield E-step: iteration 1, ELBO")
  expect_message(vb_lds(y, 2, family = poisson(), params = p, learn = FALSE, approx = "meanfield",
                        control = quiet(maxit = 50)), NA)
  # variational EM with meanfield E-steps: the trace never decreases
  g <- vb_lds(y, 2, family = poisson(), approx = "meanfield", params = p, learn = c("C", "d"),
              control = quiet(maxit = 2000, tol = 1e-6))
  expect_true(g$converged)
  expect_true(all(diff(g$elbo_trace) >= -1e-10 * (1 + abs(g$elbo))))
})

test_that("poisson ELBO is below log p(y): quadrature and importance sampling", {
  # d = 1, T = 2: log p(y) by a 2-D quadrature grid
  p <- list(A = matrix(0.8), Q = matrix(0.3), C = matrix(c(1, -0.7, 0.5), 3), d = c(1, 0.5, 1.2),
            m0 = 0, V0 = matrix(1))
  y <- matrix(c(3, 1, 5, 4, 0, 2), 2)
  fit <- vb_lds(y, 1, family = poisson(), params = p, learn = FALSE, control = quiet(tol = 1e-14))
  g <- seq(-6, 6, length.out = 601); h <- g[2] - g[1]
  lp1 <- dnorm(g, 0, 1, log = TRUE)
  ll <- function(z, t) rowSums(vapply(1:3, function(i) dpois(y[t, i], exp(p$C[i] * z + p$d[i]), log = TRUE), g))
  L <- outer(lp1 + ll(g, 1), ll(g, 2), `+`) + outer(g, g, function(a, b) dnorm(b, 0.8 * a, sqrt(0.3), log = TRUE))
  logpy <- max(L) + log(sum(exp(L - max(L)))) + 2 * log(h)
  expect_lt(fit$elbo, logpy)
  expect_lt(logpy - fit$elbo, 0.2)

  # d = 2, T = 6: importance sampling from q through its Markov factorisation
  p <- lds_test_params(2, 4, seed = 6)
  T <- 6
  set.seed(16)
  y <- vbayes:::lds_sim(p, T, "poisson")
  fit <- vb_lds(y, 2, family = poisson(), params = p, learn = FALSE, control = quiet(tol = 1e-14))
  po <- fit$posterior[[1]]; m <- t(po$mean)
  S <- 4e4; k <- 2
  Z <- array(0, c(k, S, T)); logq <- numeric(S)
  draw <- function(mu, V, n) { R <- chol(V); E <- matrix(rnorm(k * n), k)
    list(z = mu + crossprod(R, E), lq = -0.5 * colSums(E^2) - sum(log(diag(R))) - k / 2 * log(2 * pi)) }
  d <- draw(m[, T], po$cov[, , T], S); Z[, , T] <- d$z; logq <- d$lq
  for (t in (T - 1):1) {
    G <- t(po$cross[, , t + 1]) %*% solve(po$cov[, , t + 1])
    V <- po$cov[, , t] - G %*% po$cross[, , t + 1]
    d <- draw(0, (V + t(V)) / 2, S)
    Z[, , t] <- m[, t] + G %*% (Z[, , t + 1] - m[, t + 1]) + d$z; logq <- logq + d$lq
  }
  pr <- lds_dense_prior(p, T)
  Zs <- matrix(aperm(Z, c(1, 3, 2)), k * T)
  Rp <- chol(pr$Lam)
  lprior <- -0.5 * colSums((Rp %*% (Zs - pr$mu))^2) + sum(log(diag(Rp))) - k * T / 2 * log(2 * pi)
  lik <- Reduce(`+`, lapply(1:T, function(t) colSums(dpois(y[t, ], exp(p$C %*% Z[, , t] + p$d), log = TRUE))))
  lw <- lprior + lik - logq
  is <- max(lw) + log(mean(exp(lw - max(lw))))
  se <- sd(exp(lw - max(lw))) / sqrt(S) / mean(exp(lw - max(lw)))
  expect_lt(fit$elbo, is + 3 * se)
  expect_lt(is - fit$elbo, 1)
  # the ELBO itself is the mean log weight (up to Monte Carlo error)
  expect_close(mean(lw), fit$elbo, 4 * sd(lw) / sqrt(S))
})

test_that("variational EM recovers a gaussian LDS up to invariances, monotonically", {
  set.seed(21)
  k <- 2; N <- 8; th <- 0.2
  p <- list(A = 0.97 * matrix(c(cos(th), sin(th), -sin(th), cos(th)), 2), Q = diag(0.05, 2),
            C = matrix(rnorm(N * k), N, k), d = rnorm(N), R = runif(N, 0.3, 1),
            m0 = c(0, 0), V0 = diag(1, 2))
  Y <- lapply(1:3, function(i) vbayes:::lds_sim(p, 250, "gaussian"))
  fit <- vb_lds(Y, 2, control = quiet(maxit = 300, tol = 1e-9))
  expect_true(all(diff(fit$elbo_trace) >= -1e-9 * abs(fit$elbo)))
  # cosines of the principal angles between the loading subspaces
  cosang <- svd(crossprod(qr.Q(qr(fit$params$C)), qr.Q(qr(p$C))))$d
  expect_gt(min(cosang), 0.99)
  # A is identified up to similarity: compare eigenvalues
  ev <- eigen(fit$params$A)$values; ev0 <- eigen(p$A)$values
  expect_close(Mod(ev), Mod(ev0), 0.03)
  expect_close(abs(Arg(ev)), abs(Arg(ev0)), 0.03)
  expect_equal(fit$params$R, p$R, tolerance = 0.2)
  # the maximised bound beats the truth; the final ELBO is the exact
  # log-likelihood at the final parameters (dense check on a short trial;
  # the fixed-parameter smoother is checked against dense algebra above)
  tr <- vb_lds(Y, 2, params = p, learn = FALSE, control = quiet())
  expect_gt(fit$elbo, tr$elbo)
  expect_close(fit$elbo, vb_lds(Y, 2, params = fit$params, learn = FALSE, control = quiet())$elbo, 1e-8)
  expect_close(vb_lds(Y[[1]][1:30, ], 2, params = fit$params, learn = FALSE, control = quiet())$elbo,
               lds_dense_loglik(fit$params, Y[[1]][1:30, ]), 1e-6)
})

test_that("variational EM recovers poisson rates and dynamics", {
  set.seed(22)
  k <- 2; N <- 10; th <- 0.2
  p <- list(A = 0.97 * matrix(c(cos(th), sin(th), -sin(th), cos(th)), 2), Q = diag(0.05, 2),
            C = matrix(rnorm(N * k, sd = 0.5), N, k), d = rep(log(30), N), m0 = c(0, 0), V0 = diag(1, 2))
  Y <- lapply(1:3, function(i) vbayes:::lds_sim(p, 400, "poisson", 0.01))
  fit <- vb_lds(Y, 2, family = poisson(), exposure = 0.01, control = quiet(maxit = 200, tol = 1e-8))
  expect_true(all(diff(fit$elbo_trace) >= -1e-9 * abs(fit$elbo)))
  lam <- unlist(lapply(Y, function(y) exp(sweep(attr(y, "latent") %*% t(p$C), 2, p$d, "+")) * 0.01))
  expect_gt(cor(lam, unlist(fitted(fit))), 0.85)
  cosang <- svd(crossprod(qr.Q(qr(fit$params$C)), qr.Q(qr(p$C))))$d
  expect_gt(min(cosang), 0.97)
  expect_close(Mod(eigen(fit$params$A)$values), Mod(eigen(p$A)$values), 0.05)
  tr <- vb_lds(Y, 2, family = poisson(), exposure = 0.01, params = p, learn = FALSE, control = quiet())
  expect_gt(fit$elbo, tr$elbo)
})

test_that("methods: predict, fitted, simulate, summary, plot", {
  p <- lds_test_params(2, 4, seed = 7)
  set.seed(17)
  y <- vbayes:::lds_sim(p, 30, "gaussian")
  fit <- vb_lds(y, 2, params = p, learn = FALSE, control = quiet())
  post <- lds_dense_posterior(p, y)
  lat <- predict(fit, type = "latent")
  expect_close(as.vector(t(attr(lat, "sd"))), sqrt(diag(post$Sigma)), 1e-8)
  expect_close(fitted(fit), matrix(post$mean, ncol = 2, byrow = TRUE) %*% t(p$C) + rep(p$d, each = 30),
               1e-8)
  expect_equal(predict(fit, newdata = y[1:10, ], type = "latent"),
               predict(vb_lds(y[1:10, ], 2, params = p, learn = FALSE, control = quiet()), type = "latent"))
  expect_equal(elbo(fit), fit$elbo)
  expect_output(print(fit), "structured")
  expect_output(print(summary(fit)), "Dynamics")
  expect_equal(summary(fit)$dynamics$modulus, Mod(eigen(p$A)$values))
  pdf(NULL); on.exit(dev.off())
  expect_type(plot(fit), "list"); expect_s3_class(plot(fit, "elbo"), "data.frame")
  expect_type(plot(fit, "rates", units = 1:2), "list")
  # simulated poisson counts: the long-run mean is E exp(c'z + d) under the
  # stationary latent law N(0, P), P = A P A' + Q (solved by vec)
  pp <- p; pp$m0 <- c(0, 0); pp$d <- rep(1, 4); pp$C <- 0.5 * pp$C
  P <- matrix(solve(diag(4) - kronecker(pp$A, pp$A), as.vector(pp$Q)), 2)
  pp$V0 <- P
  yp <- vbayes:::lds_sim(pp, 20, "poisson")
  fp <- vb_lds(yp, 2, family = poisson(), params = pp, learn = FALSE, control = quiet())
  # predict() on new trials reuses the fit's exposure
  fe <- vb_lds(yp, 2, family = poisson(), params = pp, learn = FALSE, exposure = 0.5, control = quiet())
  expect_equal(predict(fe, newdata = yp[1:5, ]),
               fitted(vb_lds(yp[1:5, ], 2, family = poisson(), params = pp, learn = FALSE,
                             exposure = 0.5, control = quiet())))
  sims <- simulate(fp, nsim = 400, seed = 1, T = 50)
  expect_length(sims, 400); expect_equal(dim(attr(sims[[1]], "latent")), c(50, 2))
  emp <- colMeans(do.call(rbind, sims))
  expect_equal(emp, exp(pp$d + 0.5 * rowSums((pp$C %*% P) * pp$C)), tolerance = 0.05)
})

test_that("bad input gives clear errors", {
  p <- lds_test_params(2, 4, seed = 8)
  set.seed(18)
  y <- vbayes:::lds_sim(p, 10, "gaussian")
  expect_error(vb_lds(y, 0), "latent_dim")
  expect_error(vb_lds(y, 4), "smaller than the number of units")
  expect_error(vb_lds(y, 1.5), "whole number")
  expect_error(vb_lds(list(y, y[, 1:3]), 2), "same number of units")
  expect_error(vb_lds("a", 1), "numeric matrix")
  y2 <- y; y2[2, 2] <- Inf
  expect_error(vb_lds(y2, 2), "infinite")
  y3 <- y; y3[, 3] <- NA
  expect_error(vb_lds(y3, 2), "unit 3")
  expect_error(vb_lds(abs(round(y)) + 0.5, 2, family = poisson()), "whole numbers")
  expect_error(vb_lds(abs(round(y)) - 3, 2, family = poisson()), "whole numbers")
  expect_error(vb_lds(y, 2, family = binomial()), "gaussian\\(\\) .* or poisson")
  expect_error(vb_lds(y, 2, learn = FALSE), "needs 'params'")
  bad <- p; bad$C <- bad$C[, 1, drop = FALSE]
  expect_error(vb_lds(y, 2, params = bad, learn = FALSE), "params\\$C must be a finite 4 x 2")
  bad <- p; bad$Q <- diag(c(1, -1))
  expect_error(vb_lds(y, 2, params = bad, learn = FALSE), "params\\$Q must be positive definite")
  bad <- p; bad$V0 <- matrix(1, 2, 2)
  expect_error(vb_lds(y, 2, params = bad, learn = FALSE), "params\\$V0 must be positive definite")
  bad <- p; bad$R[2] <- 0
  expect_error(vb_lds(y, 2, params = bad, learn = FALSE), "R")
  bad <- p; bad$A <- NULL
  expect_error(vb_lds(y, 2, params = bad, learn = FALSE), "lacks A")
  expect_error(vb_lds(y, 2, exposure = 2), "poisson\\(\\) only")
  expect_error(vb_lds(abs(round(y)), 2, family = poisson(), exposure = -1), "exposure")
  expect_error(vb_lds(y, 2, learn = "C", params = p), "together")
  # the C entry points re-check what they rely on
  ctl <- vb_control()
  expect_error(.Call(vbayes:::C_lds_estep, y, 0, 0L, p, NULL, 0L, ctl), "off")
  expect_error(.Call(vbayes:::C_lds_estep, y, rep(0, 10), 0L, list(A = p$A), NULL, 0L, ctl), "Q")
  expect_error(.Call(vbayes:::C_lds_estep, y, rep(0, 10), 0L, p, NULL, 0L, c(1, 1e-8)), "control")
  expect_error(.Call(vbayes:::C_lds_estep, y, rep(0, 10), 0L, p, NULL, 3L, ctl), "approx")
  expect_error(.Call(vbayes:::C_lds_estep, y, rep(0, 10), 0L, p, NULL, 2L, ctl), "starts")
  expect_error(.Call(vbayes:::C_lds_estep, y, rep(0, 10), 2L, p, NULL, 0L, ctl), "family")
  expect_error(.Call(vbayes:::C_lds_poisson_mstep, y, rep(0, 10), 1, 1, p$C, p$d, ctl), "'m'")
})

# ---- issue 10: trust --------------------------------------------------------------

test_that("the block-tridiagonal solver matches a dense solve, constant or per-step blocks", {
  set.seed(31)
  d <- 2; T <- 7
  D <- array(0, c(d, d, T)); Lk <- array(rnorm(d * d * T, sd = 0.3), c(d, d, T))
  for (t in 1:T) { B <- matrix(rnorm(d * d), d); D[, , t] <- crossprod(B) + diag(3, d) }
  b <- matrix(rnorm(d * T), d)
  dense <- function(L) {
    Lam <- matrix(0, d * T, d * T)
    for (t in 1:T) {
      ix <- (t - 1) * d + 1:d
      Lam[ix, ix] <- D[, , t]
      if (t > 1) { Lt <- if (length(dim(L)) == 3) L[, , t] else L
        Lam[ix, ix - d] <- Lt; Lam[ix - d, ix] <- t(Lt) }
    }
    Lam
  }
  for (L in list(Lk[, , 1], Lk)) {
    r <- .Call(vbayes:::C_btd_solve, D, L, b)
    Lam <- dense(L); Sig <- solve(Lam)
    expect_identical(r$status, 0L)
    expect_close(r$m, solve(Lam, as.vector(b)), 1e-10)
    expect_close(r$S, lds_blocks(Sig, d, T), 1e-10)
    expect_close(r$Sc[, , -1], lds_blocks(Sig, d, T, lag = 1), 1e-10)
    expect_close(r$logdet, -as.numeric(determinant(Lam)$modulus), 1e-10)
  }
  # an indefinite precision is a status, not an error or a garbage answer
  Dbad <- D; Dbad[, , 4] <- -diag(d)
  expect_identical(.Call(vbayes:::C_btd_solve, Dbad, Lk[, , 1], b)$status, 3L)
})

test_that("the EM trace never decreases when the variance floor binds, and converged means it", {
  # a unit with variance 1e-12: on main the starting noise variance (floor 1e-11)
  # sat below the M-step floor (1e-10), the trace fell by 47 and the fit said converged
  p <- lds_test_params(2, 4, seed = 1)
  set.seed(11)
  y <- vbayes:::lds_sim(p, 60, "gaussian")
  y <- cbind(y, 1e-6 * rnorm(60))
  fit <- vb_lds(y, 2, control = quiet(maxit = 500))
  expect_identical(fit$status, 0L)
  expect_true(fit$converged)
  tr <- fit$elbo_trace
  expect_true(all(diff(tr) >= -1e-10 * (1 + abs(tr[-1]))))
  # the final ELBO is the exact log-likelihood at the fitted parameters (dense reference)
  expect_close(fit$elbo, lds_dense_loglik(fit$params, y), 1e-6 * abs(fit$elbo))
})

test_that("degenerate maximum-likelihood fits are refused or reported", {
  p <- lds_test_params(2, 4, seed = 1)
  set.seed(11)
  y <- vbayes:::lds_sim(p, 50, "gaussian")
  # T = 1 or 2 bins with everything learned: the bound grows without limit
  # (main returned ELBO 42.4 and 84.7, 'converged')
  for (T in 1:2)
    expect_error(vb_lds(y[1:T, , drop = FALSE], 1, control = quiet()), "too few observations")
  # a constant unit has no noise-variance maximum
  expect_error(vb_lds(cbind(y, 3), 2, control = quiet()), "unit 5 of 'y' is constant")
  # ... but its R may be held fixed
  pf <- vbayes:::lds_init(list(cbind(y, 3)), list(rep(0, 50)), 2, FALSE, floor = 1e-8)
  expect_s3_class(vb_lds(cbind(y, 3), 2, params = pf, learn = c("A", "Q", "C", "d", "m0", "V0"),
                         control = quiet(maxit = 5)) |> suppressWarnings(), "vblds")
  # a unit fitted exactly by the latent state (a copy of unit 1): R collapses to the floor
  expect_warning(f <- vb_lds(cbind(y, y[, 1]), 2, control = quiet(maxit = 2000)), "degenerate")
  expect_true(all(diff(f$elbo_trace) >= -1e-10 * (1 + abs(f$elbo_trace[-1]))))
  # fixed parameters need no bins at all: T = 1 is an exact posterior
  expect_close(vb_lds(y[1, , drop = FALSE], 2, params = p, learn = FALSE, control = quiet())$elbo,
               lds_dense_loglik(p, y[1, , drop = FALSE]), 1e-8)
})

test_that("quiet never silences the non-convergence warning; status is data", {
  p <- lds_test_params(2, 4, seed = 2)
  set.seed(12)
  y <- vbayes:::lds_sim(p, 40, "gaussian")
  expect_warning(f <- vb_lds(y, 2, control = vb_control(quiet = TRUE, maxit = 3)), "not converged after 3")
  expect_identical(f$status, 1L); expect_false(f$converged)
  expect_s3_class(f, c("vblds", "vb_posterior"), exact = TRUE)
  expect_warning(vb_lds(y, 2, control = list(quiet = TRUE, maxit = 3)), "not converged")
  yp <- vbayes:::lds_sim(p, 30, "poisson")
  expect_warning(g <- vb_lds(yp, 2, family = poisson(), params = p, learn = FALSE,
                             control = vb_control(quiet = TRUE, maxit = 1)), "not converged")
  expect_identical(g$status, 1L)
  g <- vb_lds(yp, 2, family = poisson(), params = p, learn = FALSE, control = quiet(tol = 1e-12))
  expect_identical(g$status, 0L); expect_true(g$converged)
})

test_that("the log joint and q draws: for the gaussian LDS log p(y, z) - log q(z) = log p(y)", {
  p <- lds_test_params(2, 4, seed = 5)
  set.seed(15)
  y1 <- vbayes:::lds_sim(p, 12, "gaussian"); y2 <- vbayes:::lds_sim(p, 5, "gaussian")
  y1[4, 2] <- NA
  fit <- vb_lds(list(y1, y2), 2, params = p, learn = FALSE, control = quiet())
  set.seed(1)
  qs <- vbayes:::q_sample.vblds(fit, 500)
  expect_equal(dim(qs$theta), c(2 * (12 + 5), 500))
  lr <- vbayes:::log_joint.vblds(fit, qs$theta) - qs$logq
  logpy <- lds_dense_loglik(p, y1) + lds_dense_loglik(p, y2)
  expect_close(lr, rep(logpy, 500), 1e-8)
  # the importance weights are constant: no heavy tail
  expect_lt(vbayes:::psis(lr)$khat, 0.5)
  # the draws have the posterior's moments (dense reference), and log q is its density
  post <- lds_dense_posterior(p, y1)
  z1 <- qs$theta[1:24, ]
  expect_close(rowMeans(z1), post$mean, 5 * max(sqrt(diag(post$Sigma))) / sqrt(500) * 3)
  Rl <- chol(post$Lam); e <- Rl %*% (z1 - post$mean)
  lq1 <- -0.5 * colSums(e^2) + sum(log(diag(Rl))) - 12 * log(2 * pi)
  po2 <- lds_dense_posterior(p, y2); R2 <- chol(po2$Lam); e2 <- R2 %*% (qs$theta[25:34, ] - po2$mean)
  expect_close(qs$logq, lq1 - 0.5 * colSums(e2^2) + sum(log(diag(R2))) - 5 * log(2 * pi), 1e-8)
  # meanfield: the mean log ratio is the ELBO (Monte Carlo), below log p(y)
  mf <- vb_lds(y1, 2, params = p, learn = FALSE, approx = "meanfield", control = quiet(tol = 1e-13, maxit = 5000))
  qm <- vbayes:::q_sample.vblds(mf, 4000)
  lm <- vbayes:::log_joint.vblds(mf, qm$theta) - qm$logq
  expect_close(mean(lm), mf$elbo, 4 * sd(lm) / sqrt(4000))
  expect_lt(mf$elbo, lds_dense_loglik(p, y1))
  # poisson: the log joint is the model's own density (checked at one draw by hand)
  yp <- vbayes:::lds_sim(p, 6, "poisson", 0.5)
  fp <- vb_lds(yp, 2, family = poisson(), params = p, learn = FALSE, exposure = 0.5, control = quiet())
  th <- vbayes:::q_sample.vblds(fp, 3)$theta
  z <- matrix(th[, 1], 2)
  ref <- mvn_logd(z[, 1], p$m0, p$V0) + sum(vapply(2:6, function(t) mvn_logd(z[, t], p$A %*% z[, t - 1], p$Q), 0)) +
    sum(dpois(yp, 0.5 * exp(t(p$C %*% z + p$d)), log = TRUE))
  expect_close(vbayes:::log_joint.vblds(fp, th)[1], ref, 1e-10)
})

test_that("vb_diagnose() works on vb_lds fits once q_sample/log_joint are generics", {
  skip_if_not("UseMethod" %in% all.names(body(vbayes:::q_sample)), "q_sample() is not yet a generic")
  p <- lds_test_params(2, 4, seed = 5)
  set.seed(15)
  y <- vbayes:::lds_sim(p, 12, "gaussian")
  fit <- vb_lds(y, 2, params = p, learn = FALSE, control = quiet())
  dg <- vb_diagnose(fit, S = 500, K = c(1, 10))
  expect_close(dg$iwae, rep(lds_dense_loglik(p, y), 2), 1e-8)
  expect_lt(dg$khat, 0.5)
})

test_that("vb_lds answers an interrupt within a second", {
  skip_on_os("windows")
  skip_on_cran()
  # a long single .Call: plain meanfield sweeps (joint_means = 0) on a strongly correlated
  # posterior, T < 1024 (main polled for interrupts only every 1024 bins: it ignored SIGINT
  # and ran on for 9 s)
  p <- list(A = matrix(0.999), Q = matrix(1e-3), C = matrix(c(1, 0.5, -0.7), 3), d = c(0, 0, 0),
            R = c(4, 4, 4), m0 = 0, V0 = matrix(1))
  set.seed(1)
  y <- vbayes:::lds_sim(p, 300, "gaussian")
  job <- parallel::mcparallel(tryCatch(
    vb_lds(y, 1, params = p, learn = FALSE, approx = "meanfield",
           control = vb_control(maxit = 1e7, tol = 1e-300, quiet = TRUE, joint_means = 0)),
    error = function(e) conditionMessage(e), interrupt = function(e) "R interrupt"))
  Sys.sleep(1.5)
  tools::pskill(job$pid, tools::SIGINT)
  t1 <- Sys.time()
  res <- parallel::mccollect(job, wait = FALSE, timeout = 5)
  lag <- as.numeric(difftime(Sys.time(), t1, units = "secs"))
  if (is.null(res)) tools::pskill(job$pid, tools::SIGKILL)
  expect_lt(lag, 1)
  expect_match(as.character(res[[1]])[1], "interrupted by the user")
})
