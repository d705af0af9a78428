# Hierarchical GLMs (R/glmm.R, src/glmm_model.c, src/glmm_cavi.c).
quiet <- vb_control(quiet = TRUE, tol = 1e-12, maxit = 3000)

test_that("with Sigma and tau fixed, the ELBO is the exact log evidence (random intercept and slope)", {
  d <- glmm_data(G = 7, m = 4, seed = 2, slope_sd = 0.5)
  X <- cbind(1, d$x)
  S0 <- diag(c(25, 4))
  # random intercept
  ref <- exact_logev_gauss(d$y, X, glmm_Z(d$g, matrix(1, nrow(d))), c(0, 0), S0, matrix(0.7), 2.5)
  for (a in c("partial", "fullrank")) {
    f <- glmm_fixed(y ~ x + (1 | g), d, Sigma = matrix(0.7), tau = 2.5, approx = a)
    expect_abs(f$elbo, ref, 1e-8, label = a)
  }
  # correlated random intercept and slope
  Sig <- matrix(c(0.6, 0.15, 0.15, 0.3), 2)
  ref2 <- exact_logev_gauss(d$y, X, glmm_Z(d$g, X), c(0, 0), S0, Sig, 2.5)
  f2 <- glmm_fixed(y ~ x + (1 + x | g), d, Sigma = Sig, tau = 2.5)
  expect_abs(f2$elbo, ref2, 1e-8)
  # the posterior mean of beta is the GLS estimate with the prior
  V <- X %*% S0 %*% t(X) * 0 + glmm_Z(d$g, X) %*% kronecker(diag(7), Sig) %*% t(glmm_Z(d$g, X)) + diag(nrow(d)) / 2.5
  Vi <- solve(V)
  bhat <- solve(crossprod(X, Vi %*% X) + solve(S0), crossprod(X, Vi %*% d$y))
  expect_equal(unname(fixef(f2)), drop(bhat), tolerance = 1e-8)
})

test_that("one grouping factor: partial equals fullrank; meanfield <= block <= partial", {
  for (fam in c("gaussian", "poisson", "binomial")) {
    d <- glmm_data(G = 8, m = 6, seed = 3, family = fam, slope_sd = 0.4)
    fm <- get(fam)()
    fits <- lapply(c(meanfield = "meanfield", block = "block", partial = "partial", fullrank = "fullrank"),
                   function(a) vb(y ~ x + (1 + x | g), data = d, family = fm, approx = a, control = quiet))
    e <- vapply(fits, elbo, 0)
    expect_abs(e[["partial"]], e[["fullrank"]], 1e-8, label = fam)
    expect_true(e[["meanfield"]] <= e[["block"]] + 1e-8 && e[["block"]] <= e[["partial"]] + 1e-8, label = fam)
    expect_equal(vcov(fits$partial), vcov(fits$fullrank), tolerance = 1e-6)
    for (f in fits) expect_true(f$converged)
  }
})

test_that("the ELBO never decreases along a sweep, in every family and approximation", {
  d <- glmm_data(G = 10, m = 5, seed = 4, family = "poisson", slope_sd = 0.3)
  for (a in c("partial", "block", "meanfield", "fullrank")) {
    f <- vb(y ~ x + (x || g), data = d, family = poisson(), approx = a, control = quiet)
    tr <- f$elbo_trace
    expect_true(all(diff(tr) >= -1e-9 * abs(tr[-1])), label = a)
  }
})

test_that("crossed factors (grouseticks-like): meanfield <= block <= partial <= fullrank", {
  set.seed(5)
  # broods nested in locations crossed with years, as in lme4::grouseticks (small)
  d <- expand.grid(loc = factor(1:6), year = factor(1:3), rep = 1:3)
  d$brood <- factor(paste(d$loc, d$year, sep = ":"))
  d$h <- rnorm(nrow(d))
  d$y <- rpois(nrow(d), exp(0.4 + 0.3 * d$h + rnorm(6, sd = 0.6)[d$loc] + rnorm(18, sd = 0.5)[d$brood]))
  fits <- lapply(c(meanfield = "meanfield", block = "block", partial = "partial", fullrank = "fullrank"), function(a)
    vb(y ~ year + h + (1 | brood) + (1 | loc), data = d, family = poisson(), approx = a, control = quiet))
  e <- vapply(fits, elbo, 0)
  for (f in fits) expect_true(f$converged)
  expect_true(all(diff(e) >= -1e-8), label = paste(format(e, digits = 12), collapse = " <= "))
  expect_gt(e[["partial"]], e[["block"]] + 0.1) # coupling beta to both factors matters here
  # partial's fixed-effect sds close the gap between block and fullrank
  sd <- sapply(fits, function(f) sqrt(diag(vcov(f))))
  expect_true(all(abs(sd[, "partial"] / sd[, "fullrank"] - 1) < 0.1))
  expect_true(all(sd[, "block"] < sd[, "partial"]))
  # nested syntax (1 | loc/brood) fits the same model as (1 | loc) + (1 | loc:brood)
  d$yr <- d$year
  n1 <- vb(y ~ h + (1 | loc/yr), data = d, family = poisson(), control = quiet)
  n2 <- vb(y ~ h + (1 | loc) + (1 | loc:yr), data = d, family = poisson(), control = quiet)
  expect_equal(elbo(n1), elbo(n2), tolerance = 1e-10)
  expect_equal(sort(names(n1$ranef)), c("loc", "yr:loc"))
})

test_that("partial with crossed factors equals a direct optimisation of its own ELBO (poisson, tiny)", {
  set.seed(21)
  d <- expand.grid(a = factor(1:3), b = factor(1:2), rep = 1:2)
  d$x <- rnorm(nrow(d))
  d$y <- rpois(nrow(d), exp(0.3 + 0.5 * d$x + c(-0.4, 0.1, 0.5)[d$a] + c(0.3, -0.3)[d$b]))
  f <- vbayes:::vb_glmm(mc = call("vb"), formula = y ~ x + (1 | a) + (1 | b), data = d, family = poisson(),
                        prior = normal(0, 2), prior_intercept = normal(0, 5), prior_precision = NULL,
                        prior_covariance = vbayes:::fixed_covariance(matrix(0.5)), approx = "partial",
                        control = quiet, x = TRUE, y = TRUE, contrasts = NULL, missing_prior = FALSE,
                        missing_intercept = FALSE, env = environment())
  C <- cbind(1, d$x, glmm_Z(d$a, matrix(1, nrow(d))), glmm_Z(d$b, matrix(1, nrow(d))))
  P <- diag(c(1 / 25, 1 / 4, rep(1 / 0.5, 5)))
  ref <- brute_force_partial_pois(C, d$y, P, numeric(7), p = 2, sizes = c(3, 2))
  expect_abs(f$elbo, ref, 1e-6)
  # and the dense optimum lies above it (the family is smaller)
  ref_full <- brute_force_pois(C, d$y, P, numeric(7))
  expect_gt(ref_full, f$elbo - 1e-8)
  # draws from q: their mean log p - log q is the ELBO, so sampler and density agree
  fh <- vb(y ~ x + (1 | a) + (1 | b), data = d, family = poisson(), control = quiet)
  set.seed(2)
  dg <- vb_diagnose(fh, S = 2000)
  expect_abs(dg$elbo_mc, fh$elbo, 4 * dg$elbo_mc_se + 1e-3)
  th <- vbayes:::q_sample(fh, 10000)$theta
  V <- cov(t(th[1:7, ]))
  expect_equal(diag(V)[1:2], diag(vcov(fh)), tolerance = 0.05)
  expect_equal(V[1, 3], fh$ranef$a$cross[1, 1, 1], tolerance = 0.1)
  expect_lt(abs(cor(th[3, ], th[6, ])), 0.1) # factors independent under q
})

test_that("parameter expansion keeps the optimum and cuts the sweeps (binomial, 5 observations per group)", {
  set.seed(31)
  G <- 60; m <- 5
  d <- data.frame(g = factor(rep(seq_len(G), each = m)), x = rnorm(G * m))
  d$y <- rbinom(G * m, 1, plogis(-0.5 + 0.8 * d$x + rnorm(G, sd = 0.7)[d$g] + rnorm(G, sd = 0.3)[d$g] * d$x))
  run <- function(expand, a) vbayes:::vb_glmm(mc = call("vb"), formula = y ~ x + (1 + x | g), data = d, family = binomial(),
                                              prior = NULL, prior_intercept = NULL, prior_precision = NULL, prior_covariance = NULL,
                                              approx = a, control = vb_control(quiet = TRUE, tol = 1e-10, maxit = 5000),
                                              x = TRUE, y = TRUE, contrasts = NULL, missing_prior = TRUE,
                                              missing_intercept = TRUE, env = environment(), expand = expand)
  for (a in c("partial", "block", "meanfield")) {
    fx <- run(TRUE, a); f0 <- run(FALSE, a)
    expect_true(fx$converged && f0$converged, label = a)
    expect_abs(fx$elbo, f0$elbo, 1e-5, label = a)
    expect_lt(fx$iterations, f0$iterations / 3)
    expect_true(all(diff(fx$elbo_trace) >= -1e-9 * abs(fx$elbo)), label = a)
  }
})

test_that("the engine's optimum equals a direct optimisation of the same ELBO (poisson, tiny)", {
  d <- glmm_data(G = 3, m = 3, seed = 6, family = "poisson")
  Sig <- matrix(0.5)
  f <- glmm_fixed(y ~ x + (1 | g), d, Sigma = Sig, family = poisson())
  C <- cbind(1, d$x, glmm_Z(d$g, matrix(1, nrow(d))))
  P <- diag(c(1 / 25, 1 / 4, rep(1 / 0.5, 3)))
  ref <- brute_force_pois(C, d$y, P, numeric(5))
  expect_abs(f$elbo, ref, 1e-6)
  expect_lte(ref, f$elbo + 1e-8)
})

test_that("the ELBO lies below the log evidence computed by quadrature over Sigma", {
  d <- glmm_data(G = 6, m = 4, seed = 7)
  X <- cbind(1, d$x); Z <- glmm_Z(d$g, matrix(1, nrow(d)))
  S0 <- diag(c(25, 4)); tau <- 2.5; df <- 3; psi <- 0.8
  # Sigma = s ~ InvWishart(df, psi) = InvGamma(df / 2, psi / 2) in one dimension
  ll <- function(s) exact_logev_gauss(d$y, X, Z, c(0, 0), S0, matrix(s), tau)
  lprior <- function(s) dgamma(1 / s, df / 2, psi / 2, log = TRUE) - 2 * log(s)
  mx <- optimize(function(u) ll(exp(u)) + lprior(exp(u)) + u, c(-8, 4), maximum = TRUE)$objective
  ev <- mx + log(integrate(Vectorize(function(u) exp(ll(exp(u)) + lprior(exp(u)) + u - mx)), -12, 6,
                           rel.tol = 1e-10)$value)
  f <- vbayes:::vb_glmm(mc = call("vb", formula = y ~ x + (1 | g)), formula = y ~ x + (1 | g), data = d,
                        family = gaussian(), prior = normal(0, 2), prior_intercept = normal(0, 5),
                        prior_precision = gamma_prior(1, 1), prior_covariance = inv_wishart(df, sqrt(psi)),
                        approx = "partial", control = quiet, x = TRUE, y = TRUE, contrasts = NULL,
                        missing_prior = FALSE, missing_intercept = FALSE, env = environment(), fix_tau = tau)
  expect_lte(f$elbo, ev)
  expect_gt(f$elbo, ev - 0.5)
})

test_that("the ELBO lies below importance-sampled log evidences (binomial, huang_wand)", {
  d <- glmm_data(G = 8, m = 6, seed = 8, family = "binomial")
  f <- vb(y ~ x + (1 | g), data = d, family = binomial(), control = quiet)
  set.seed(1)
  dg <- vb_diagnose(f, S = 4000)
  # log joint and log q are evaluated in R: their mean over q's draws is the ELBO
  expect_abs(dg$elbo_mc, f$elbo, 4 * dg$elbo_mc_se + 1e-3)
  expect_lte(f$elbo, max(dg$iwae) + 3 * max(dg$iwae_se))
})

test_that("many observations per group, wide priors: fixed effects and modes approach lmer/glmer", {
  skip_if_not_installed("lme4")
  set.seed(9)
  G <- 12; m <- 150
  d <- data.frame(g = factor(rep(1:G, each = m)), x = rnorm(G * m))
  b <- rnorm(G, sd = 0.7)
  d$y <- 2 + 0.5 * d$x + b[d$g] + rnorm(G * m, sd = 0.5)
  d$cnt <- rpois(G * m, exp(0.5 + 0.3 * d$x + b[d$g]))
  f <- vb(y ~ x + (1 | g), data = d, prior = normal(0, 100), prior_intercept = normal(0, 100), control = quiet)
  l <- lme4::lmer(y ~ x + (1 | g), data = d, REML = TRUE)
  expect_equal(unname(fixef(f)), unname(lme4::fixef(l)), tolerance = 1e-3)
  expect_equal(ranef(f)$g[[1]], lme4::ranef(l)$g[[1]], tolerance = 2e-3)
  fp <- vb(cnt ~ x + (1 | g), data = d, family = poisson(), prior = normal(0, 100),
           prior_intercept = normal(0, 100), control = quiet)
  lp <- lme4::glmer(cnt ~ x + (1 | g), data = d, family = poisson())
  expect_equal(unname(fixef(fp))[2], unname(lme4::fixef(lp))[2], tolerance = 1e-2)
  expect_equal(ranef(fp)$g[[1]] + fixef(fp)[1], lme4::ranef(lp)$g[[1]] + lme4::fixef(lp)[1], tolerance = 1e-2)
})

test_that("fits with and without random effects compare by their ELBO", {
  d <- glmm_data(G = 8, m = 6, seed = 10)
  pr <- normal(0, 2); pi <- normal(0, 5)
  flat <- vb(y ~ x, data = d, prior = pr, prior_intercept = pi, control = quiet)
  ri <- vb(y ~ x + (1 | g), data = d, prior = pr, prior_intercept = pi, control = quiet)
  rs <- vb(y ~ x + (1 + x | g), data = d, prior = pr, prior_intercept = pi, control = quiet)
  tab <- compare_models(flat = flat, ri = ri, rs = rs)
  expect_equal(tab$elbo, c(elbo(flat), elbo(ri), elbo(rs)))
  expect_equal(tab$model[which.max(tab$elbo)], "ri")
})

test_that("methods: ranef in lme4's shape, VarCorr, coef, predict with re.form and new levels", {
  d <- glmm_data(G = 6, m = 8, seed = 11, slope_sd = 0.4)
  f <- vb(y ~ x + (1 + x | g), data = d, control = quiet)
  re <- ranef(f)
  expect_equal(dim(re$g), c(6L, 2L))
  expect_equal(dim(attr(re$g, "postVar")), c(2L, 2L, 6L))
  expect_equal(colnames(re$g), c("(Intercept)", "x"))
  cf <- coef(f)$g
  expect_equal(cf[, "x"], fixef(f)[["x"]] + re$g$x)
  vc <- VarCorr(f)
  expect_equal(vc$grp, c("g", "g", "g", "Residual"))
  expect_true(all(vc$lower <= vc$sdcor & vc$sdcor <= vc$upper))
  # predictions: in sample = the engine's linear predictor; NA = the fixed part
  expect_equal(unname(predict(f)), f$linear.predictors, tolerance = 1e-10)
  expect_equal(unname(predict(f, re.form = NA)), drop(cbind(1, d$x) %*% fixef(f)), tolerance = 1e-10)
  nd <- data.frame(x = c(0.5, 0.5), g = c("2", "new"))
  pr <- predict(f, nd, se.fit = TRUE)
  expect_equal(pr$fit[[2]], sum(fixef(f) * c(1, 0.5)), tolerance = 1e-10)
  ES <- f$cov_q[[1]]$Psi / (f$cov_q[[1]]$df - 3)
  z <- c(1, 0.5)
  expect_equal(pr$se.fit[[2]]^2, sum(z * (vcov(f) %*% z)) + sum(z * (ES %*% z)), tolerance = 1e-8)
  expect_error(predict(f, nd, allow.new.levels = FALSE), "not in the fit")
  expect_equal(dim(simulate(f, 3, seed = 1)), c(nrow(d), 3L))
  expect_equal(ncol(draws(f, 5)), length(vbayes:::glmm_theta_names(f)))
  expect_output(print(summary(f)), "Random effects")
  expect_equal(nobs(f), nrow(d))
})

test_that("poisson exposure and binomial response forms", {
  d <- glmm_data(G = 6, m = 6, seed = 12, family = "poisson")
  d$ex <- runif(nrow(d), 0.5, 2)
  f1 <- vb(y ~ x + (1 | g), data = d, family = poisson(), exposure = ex, control = quiet)
  f2 <- vb(y ~ x + offset(log(ex)) + (1 | g), data = d, family = poisson(), control = quiet)
  expect_equal(f1$elbo, f2$elbo, tolerance = 1e-8)
  b <- data.frame(g = factor(rep(1:5, each = 4)), x = rnorm(20), n = 6)
  b$s <- rbinom(20, 6, 0.4)
  f3 <- vb(cbind(s, n - s) ~ x + (1 | g), data = b, family = binomial(), control = quiet)
  f4 <- vb(s / n ~ x + (1 | g), data = b, weights = n, family = binomial(), control = quiet)
  expect_equal(f3$elbo, f4$elbo, tolerance = 1e-8)
})

test_that("bad input: clear errors", {
  d <- glmm_data(G = 5, m = 4, seed = 13)
  d1 <- d; d1$g1 <- factor("a")
  expect_error(vb(y ~ x + (1 | g1), data = d1, control = quiet), "at least two groups")
  dn <- d; dn$g[3] <- NA
  f <- vb(y ~ x + (1 | g), data = dn, control = quiet)
  expect_equal(nobs(f), nrow(d) - 1L)
  expect_error(vb(y ~ x + (1 | g), data = dn, na.action = na.fail, control = quiet), "missing values")
  dc <- d; dc$z <- 3
  expect_error(vb(y ~ x + (1 + z | g), data = dc, control = quiet), "does not vary")
  di <- d; di$obs <- factor(seq_len(nrow(d)))
  expect_error(vb(y ~ x + (1 | obs), data = di, control = quiet), "cannot be told apart")
  expect_error(vb(y ~ x + (1 | g), data = d, prior = laplace(0, 1), control = quiet), "normal\\(\\) priors")
  expect_error(vb(y ~ x + (1 | g), data = d, prior_covariance = "iw", control = quiet), "prior_covariance")
  expect_error(huang_wand(nu = -1), "nu")
  expect_error(inv_wishart(scale = matrix(c(1, 2, 2, 1), 2)), "positive definite")
  expect_error(vb(y ~ x + (1 + x | g), data = d, prior_covariance = huang_wand(scale = c(1, 2, 3)), control = quiet),
               "one per dimension")
  expect_error(vb(y ~ x + (1 | g), data = d, approx = "structured", control = quiet), "approx")
})

test_that("vcov(correction = \"integrate\") recovers the exact posterior sd that the factorisation loses", {
  # random intercept, tau fixed, Sigma ~ InvWishart(3, 0.8): Var(beta | y) by
  # quadrature over Sigma of GLS conditionals, E Var(beta | Sigma) + Var E(beta | Sigma)
  d <- glmm_data(G = 6, m = 4, seed = 7)
  X <- cbind(1, d$x); Z <- glmm_Z(d$g, matrix(1, nrow(d)))
  S0 <- diag(c(25, 4)); tau <- 2.5; df <- 3; psi <- 0.8
  post_beta <- function(s) {
    Vi <- solve(Z %*% t(Z) * s + diag(nrow(d)) / tau)
    C <- solve(crossprod(X, Vi %*% X) + solve(S0))
    list(m = drop(C %*% crossprod(X, Vi %*% d$y)), C = C)
  }
  u <- seq(-10, 5, length.out = 1500)
  lw <- vapply(exp(u), function(s) exact_logev_gauss(d$y, X, Z, c(0, 0), S0, matrix(s), tau) +
                 dgamma(1 / s, df / 2, psi / 2, log = TRUE) - 2 * log(s), 0) + u
  w <- exp(lw - max(lw)); w <- w / sum(w)
  pb <- lapply(exp(u), post_beta)
  Em <- Reduce(`+`, Map(function(q, wi) wi * q$m, pb, w))
  Vex <- Reduce(`+`, Map(function(q, wi) wi * (q$C + tcrossprod(q$m - Em)), pb, w))
  f <- vbayes:::vb_glmm(mc = call("vb"), formula = y ~ x + (1 | g), data = d,
                        family = gaussian(), prior = normal(0, 2), prior_intercept = normal(0, 5),
                        prior_precision = gamma_prior(1, 1), prior_covariance = inv_wishart(df, sqrt(psi)),
                        approx = "partial", control = quiet, x = TRUE, y = TRUE, contrasts = NULL,
                        missing_prior = FALSE, missing_intercept = FALSE, env = environment(), fix_tau = tau)
  r0 <- sqrt(diag(vcov(f))) / sqrt(diag(Vex))
  set.seed(1)
  r1 <- sqrt(diag(vcov(f, correction = "integrate", ndraws = 400))) / sqrt(diag(Vex))
  expect_lt(r0[[1]], 0.92)
  expect_true(all(abs(r1 - 1) < 0.03), label = paste(format(r1), collapse = ", "))
  expect_identical(vcov(f), f$vcov)
  expect_error(vcov(f, correction = "lr"), "should be one of")
})
