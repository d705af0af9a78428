# Fuzz suite: bad and degenerate input to every exported function.  Each case
# says what must happen (helper-fuzz.R): a clear error for invalid input, a
# sensible result (finite numbers; non-convergence only with a warning) for
# valid input.  Each runs in a forked child so a crash fails one case only.
# Then every registered .Call entry point gets garbage and mutants of real
# argument lists (only a crash fails those; under `make sanitize` a sanitizer
# report is a crash).  VBAYES_FUZZ_REPORT=cases.csv writes every verdict.

skip_on_os("windows") # forks (parallel::mcparallel)

# ---- fixtures: small data and valid fits, built once in this process ------
fx <- new.env()
local(envir = fx, {
  set.seed(42)
  n <- 40L
  d <- data.frame(x = rnorm(n), x2 = rnorm(n), g = factor(rep(c("a", "b"), n / 2)))
  d$y <- 1 + d$x + rnorm(n, sd = 0.5)
  d$cnt <- rpois(n, exp(0.5 + 0.3 * d$x))
  d$bin <- rbinom(n, 1, plogis(d$x))
  d$trials <- rep(4, n)
  d$succ <- rbinom(n, 4, plogis(d$x))
  d$ex <- runif(n, 0.5, 2)
  X <- cbind("(Intercept)" = 1, x = d$x)
  # perfectly separated logistic data (issue 10's reproduction)
  set.seed(1)
  sep <- data.frame(x = rnorm(50))
  sep$y <- as.numeric(sep$x > 0)
  # a 3-unit latent dynamical system, T = 60
  set.seed(3)
  z <- as.numeric(stats::arima.sim(list(ar = 0.9), 60))
  Y <- outer(z, c(1, -0.5, 0.8)) + matrix(rnorm(180, sd = 0.5), 60)
  Ycnt <- matrix(rpois(180, exp(0.2 + outer(z, c(0.3, -0.2, 0.25)))), 60)
  quiet <- vb_control(quiet = TRUE)
  B <- raised_cosine_basis(3, c(0.005, 0.02), 0.01, 0.005)
  nd <- neuron[1:1500, ]
  lme <- matrix(c(-10.3, -9.7, -11, -9, -10, -10.5, -12, -9.9, -8, -9), 5, 2, byrow = TRUE,
                dimnames = list(NULL, c("m1", "m2")))
  P <- solve(matrix(c(1, 0.5, 0.5, 2), 2))
  ld <- function(th) -0.5 * sum(th * (P %*% th))
  gr <- function(th) -drop(P %*% th)
  dctl <- vb_control(quiet = TRUE, sgvb_maxit = 3000)
})
fx$fixture_errors <- character(0)
fixture <- function(name, expr) {
  v <- tryCatch(suppressWarnings(eval(substitute(expr), fx)),
                error = function(e) { fx$fixture_errors[name] <- conditionMessage(e); NULL })
  if (!is.null(v)) assign(name, v, envir = fx)
}
fixture("fit_g", vb(y ~ x, data = d))
fixture("fit_g2", vb(y ~ x + x2, data = d))
fixture("fit_p", vb(cnt ~ x, data = d, family = poisson()))
fixture("fit_b", vb(bin ~ x, data = d, family = binomial()))
fixture("fit_xf", vb(y ~ x, data = d, x = FALSE))
fixture("fit_pxf", vb(cnt ~ x, data = d, family = poisson(), x = FALSE))
fixture("fit_hist", vb(spikes ~ stim + history(spikes, B, trial), data = nd, family = poisson(),
                       exposure = 0.005))
fixture("lds1", vb_lds(Y, 1, control = vb_control(maxit = 40, quiet = TRUE)))
fixture("lds2", vb_lds(Y, 2, control = vb_control(maxit = 40, quiet = TRUE)))
fixture("dens", vb_density(ld, init = c(a = 1, b = -1), gradient = gr, control = dctl))

# Engines with their own topic file: tests/testthat/helper-fuzz-<topic>.R defines
#   fuzz_topic_<topic> <- list(
#     setup    = function(fx, fixture) ...,  # data into fx, fixture("name", expr) for fits
#     cases    = function() list(<group> = list(fz_err(...), fz_ok(...), ...)),
#     workload = alist(...))                 # valid calls whose .Call arguments get mutated
# so each engine adds its cases without editing this file.
fuzz_topics <- mget(ls(environment(fz_err), pattern = "^fuzz_topic_"), envir = environment(fz_err))
for (tp in fuzz_topics) if (is.function(tp$setup)) tp$setup(fx, fixture)
fuzz_topic_workload <- unlist(lapply(fuzz_topics, `[[`, "workload"), recursive = FALSE)

test_that("the fuzz fixtures (valid fits) build", {
  expect(length(fx$fixture_errors) == 0L,
         paste("fixtures failed:", paste(names(fx$fixture_errors), fx$fixture_errors, sep = ": ", collapse = "; ")))
})

# ---- checks used by several cases -------------------------------------------
nrows_is <- function(k) function(v, w) if (NROW(v) == k) fz_finite(v) else sprintf("%d rows, expected %d", NROW(v), k)
zero_coef_fit <- function(f, w) {
  if (length(f$coefficients) != 0L) return("a zero-column design gave coefficients")
  fz_fit(f, w)
}
# the fullrank optimum is never below meanfield's, unless the fit says it stalled
fullrank_ge_meanfield <- function(v, w) {
  ok <- fz_fit(v$fr, w)
  if (!isTRUE(ok)) return(ok)
  if (v$fr$elbo >= v$mf$elbo - 1e-6 * abs(v$mf$elbo)) return(TRUE)
  if (!isTRUE(v$fr$converged) && length(w)) return(TRUE)
  sprintf("fullrank ELBO %.4f < meanfield ELBO %.4f with converged = TRUE", v$fr$elbo, v$mf$elbo)
}
warned <- function(v, w) if (length(w)) TRUE else "a degenerate fit was returned without a warning"
bor_limit <- function(b, w) {
  if (!is.finite(b$omnibus_risk) || abs(b$omnibus_risk - 0.5) > 1e-3)
    return(sprintf("omnibus risk %g; as alpha0 -> Inf it tends to 1/2", b$omnibus_risk))
  fz_finite(b[c("alpha", "expected_frequency", "exceedance", "protected_exceedance")])
}
in01 <- function(v, w) if (all(is.finite(v)) && all(v >= 0 & v <= 1)) TRUE else "probabilities outside [0, 1]"

# ---- the cases, by the function they exercise --------------------------------
cases <- list(
  priors = list(
    fz_err(normal("a")), fz_err(normal(NA)), fz_err(normal(numeric(0))), fz_err(normal(0, -1)),
    fz_err(normal(0, NaN)), fz_err(normal(0, Inf)), fz_err(normal(list(0), 1)), fz_err(normal(0, 0)),
    fz_err(normal(1i, 1)), fz_err(normal(Inf, 1)), fz_err(laplace(0, 0)), fz_err(laplace(Inf, 1)),
    fz_err(laplace(0, "1")), fz_err(gamma_prior(-1, 1)), fz_err(gamma_prior(1, Inf)),
    fz_err(gamma_prior(NA, 1)), fz_err(gamma_prior(c(1, 2), 1)), fz_err(gamma_prior(0, 1)),
    fz_err(gamma_prior(1i, 1)),
    fz_ok(normal(c(0, 1), c(1, 2)), check = function(v, w) inherits(v, "vb_prior"))
  ),
  vb_control = list(
    fz_err(vb_control(maxit = 1e10)), fz_err(vb_control(maxit = .Machine$integer.max)),
    fz_err(vb_control(maxit = 0)), fz_err(vb_control(maxit = 1.5)), fz_err(vb_control(maxit = NA)),
    fz_err(vb_control(maxit = "10")), fz_err(vb_control(tol = 0)), fz_err(vb_control(tol = NA)),
    fz_err(vb_control(tol = -1)), fz_err(vb_control(quiet = NA)), fz_err(vb_control(quiet = "yes")),
    fz_err(vb_control(gh_nodes = 1)), fz_err(vb_control(samples = 0)), fz_err(vb_control(step_size = -1)),
    fz_err(vb_control(sgvb_maxit = 1e10)), fz_err(vb_control(window = 1)),
    fz_err(vb_control(elbo_samples = 1)), fz_err(vb_control(precision = 0)),
    fz_err(vb_control(joint_means = -1)), fz_err(vb_control(blocks = "a")),
    fz_err(vb_control(binomial_method = "xx")), fz_err(vb_control(adapt_iter = 1e12)),
    fz_ok(vb_control(maxit = 3), check = function(v, w) identical(v$maxit, 3L))
  ),
  vb = list(
    # missing values are dropped by na.action, as in glm(); infinite ones are refused
    fz_ok(vb(y ~ x, data = within(d, y[3] <- NA)), check = fz_fit),
    fz_ok(vb(y ~ x, data = within(d, y[3] <- NaN)), check = fz_fit),
    fz_ok(vb(y ~ x, data = within(d, x[5] <- NA)), check = fz_fit),
    fz_ok(vb(y ~ x, data = d, weights = c(NA, rep(1, n - 1))), check = fz_fit),
    fz_ok(vb(cnt ~ x, data = d, family = poisson(), offset = c(NA, rep(0, n - 1))), check = fz_fit),
    fz_ok(vb(cnt ~ x, data = within(d, ex[2] <- NA), family = poisson(), exposure = ex), check = fz_fit),
    fz_err(vb(y ~ x, data = within(d, y[3] <- NA), na.action = na.fail)),
    fz_err(vb(y ~ x, data = within(d, y[3] <- Inf))), fz_err(vb(y ~ x, data = within(d, y[3] <- -Inf))),
    fz_err(vb(y ~ x, data = within(d, x[3] <- Inf))),
    fz_err(vb(y ~ x, data = d, weights = c(Inf, rep(1, n - 1)))),
    fz_err(vb(y ~ x, data = d, weights = c(-1, rep(1, n - 1)))),
    fz_err(vb(y ~ x, data = d, weights = rep("1", n))), fz_err(vb(y ~ x, data = d, weights = factor(rep(1, n)))),
    fz_err(vb(y ~ x, data = d, weights = rep(1i, n))),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), offset = rep(Inf, n))),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), offset = rep("0", n))),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), exposure = 0)),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), exposure = -1)),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), exposure = NA)),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), exposure = Inf)),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), exposure = "a")),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), exposure = c(0.1, 0.2, 0.3))),
    fz_err(vb(y ~ x, data = d, exposure = ex)), fz_err(vb(bin ~ x, data = d, family = binomial(), exposure = 0.1)),
    fz_err(vb(y ~ x, data = transform(d, y = as.character(y)))),
    fz_err(vb(y ~ x, data = transform(d, y = factor(cnt)))), fz_err(vb(y ~ x, data = transform(d, y = y + 1i))),
    fz_err(vb(I(as.list(y)) ~ x, data = d)),
    fz_err(vb(y ~ x, data = transform(d, x = x + 1i))),
    fz_err(vb(cnt ~ x, data = transform(d, cnt = -cnt - 1), family = poisson())),
    fz_err(vb(cnt ~ x, data = transform(d, cnt = cnt + 0.5), family = poisson())),
    fz_err(vb(cnt ~ x, data = d, family = binomial())),
    fz_err(vb(I(-bin) ~ x, data = d, family = binomial())),
    fz_err(vb(I(succ / trials) ~ x, data = d, family = binomial(), weights = rep(2.5, n)),
           label = "binomial proportions with fractional trials (weights = 2.5)"),
    fz_err(vb(cbind(succ, trials - succ + 0.5) ~ x, data = d, family = binomial())),
    fz_err(vb(cbind(succ, trials - succ, 1) ~ x, data = d, family = binomial())),
    fz_err(vb(I(succ / trials) ~ x, data = d, family = binomial(), weights = rep(0, n)),
           label = "binomial with all-zero weights"),
    fz_err(vb(cbind(succ * 0, 0 * trials) ~ x, data = d, family = binomial()),
           label = "binomial cbind() with zero trials everywhere"),
    fz_ok(vb(y ~ x, data = d, weights = c(0, rep(1, n - 1))), check = fz_fit),
    fz_err(vb(y ~ x, data = d[0, ])), fz_err(vb(y ~ x, data = d, subset = x > 100)),
    fz_err(vb(y ~ x, data = "a")),
    fz_ok(vb(y ~ 0, data = d), check = zero_coef_fit), fz_ok(vb(y ~ -1, data = d), check = zero_coef_fit),
    fz_ok(vb(cnt ~ 0, data = d, family = poisson()), check = zero_coef_fit),
    fz_ok(vb(bin ~ 0, data = d, family = binomial()), check = zero_coef_fit),
    fz_ok(vb(cnt ~ 0 + offset(x / 10), data = d, family = poisson()), check = zero_coef_fit),
    fz_ok(vb(y ~ x + I(2 * x), data = d), check = fz_fit, label = "rank-deficient design (x and 2x)"),
    fz_ok(vb(y ~ x + g + I(g == "b"), data = d), check = fz_fit),
    fz_ok(vb(y ~ x, data = d[1, ]), check = fz_fit, label = "one observation, two coefficients"),
    fz_ok(vb(y ~ x, data = transform(d, y = 3)), check = fz_fit, label = "constant response"),
    fz_ok(vb(y ~ x, data = sep, family = binomial()), check = fz_fit, label = "perfect separation, default priors"),
    fz_ok(list(fr = vb(y ~ x, data = sep, family = binomial(), prior = normal(0, 1e6),
                       prior_intercept = normal(0, 1e6)),
               mf = vb(y ~ x, data = sep, family = binomial(), prior = normal(0, 1e6),
                       prior_intercept = normal(0, 1e6), approx = "meanfield")),
          check = fullrank_ge_meanfield, label = "separation with normal(0, 1e6): fullrank ELBO >= meanfield ELBO"),
    fz_ok({ Sys.setenv(LANGUAGE = "de"); vb(y ~ x, data = sep, family = binomial()) },
          check = function(f, w) if (isTRUE(f$separated)) fz_fit(f, w) else "separation not detected under LANGUAGE=de",
          label = "separation is detected whatever the language of R's messages"),
    fz_either(vb(y ~ x, data = transform(d, y = y * 1e200)), check = fz_fit),
    fz_either(vb(y ~ x, data = transform(d, x = x * 1e200)), check = fz_fit),
    fz_err(vb(y ~ x, data = d, prior = normal(0, 1e-200))), fz_err(vb(y ~ x, data = d, prior = normal(1e300, 1))),
    fz_err(vb(y ~ x, data = d, prior = normal(0, 1e200))), fz_err(vb(y ~ x, data = d, prior = laplace(0, 1e-200))),
    fz_err(vb(y ~ x, data = d, prior_intercept = normal(-1e300, 1))),
    fz_err(vb(cnt ~ x, data = d, family = poisson(), prior = normal(0, 1e-200))),
    fz_err(vb(bin ~ x, data = d, family = binomial(), prior = laplace(1e300, 1))),
    fz_err(vb(y ~ x, data = d, prior = normal(c(0, 0, 0), 1))), fz_err(vb(y ~ x, data = d, prior = NULL)),
    fz_err(vb(y ~ x, data = d, prior = gamma_prior(1, 1))), fz_err(vb(y ~ x, data = d, prior_precision = normal())),
    fz_err(vb(y ~ x, data = d, prior = "normal")), fz_err(vb(y ~ x, data = d, prior_intercept = normal(c(0, 1), 1))),
    fz_err(vb(y ~ x, data = d, family = "nosuchfamily")), fz_err(vb(y ~ x, data = d, family = 3)),
    fz_err(vb(bin ~ x, data = d, family = binomial("probit"))), fz_err(vb(y ~ x, data = transform(d, y = abs(y)), family = Gamma())),
    fz_err(vb(cnt ~ x, data = d, family = quasipoisson())),
    fz_err(vb(y ~ x, data = d, approx = "bogus")), fz_err(vb(y ~ x, data = d, method = "bogus")),
    fz_err(vb(y ~ x, data = d, control = vb_control(maxit = 1e10))),
    fz_err(vb(y ~ x, data = d, control = list(5))), fz_err(vb(y ~ x, data = d, control = "a")),
    fz_ok(vb(y ~ x, data = d, control = list(maxit = 50, quiet = TRUE)), check = fz_fit),
    fz_err(vb(y ~ x, data = d, approx = "block", control = vb_control(blocks = list("nonexistent")))),
    fz_err(vb(y ~ x, data = d, approx = "block", control = vb_control(blocks = c(1, 2, 3)))),
    fz_err(vb(bin ~ x, data = d, family = binomial(), approx = "meanfield",
              control = vb_control(binomial_method = "jj"))),
    fz_err(vb(bin ~ x, data = d, family = binomial(), prior = laplace(0, 1),
              control = vb_control(binomial_method = "jj"))),
    fz_ok(vb(bin ~ x, data = d, family = binomial(), control = vb_control(binomial_method = "jj")), check = fz_fit),
    fz_ok(vb(y ~ x, data = d, approx = "meanfield", prior = laplace(0, 1)), check = fz_fit),
    fz_ok(vb(y ~ x, data = d, method = "sgvb", control = vb_control(quiet = TRUE, sgvb_maxit = 3000)), check = fz_fit),
    fz_ok(vb(cnt ~ x, data = d, family = poisson(), method = "sgvb", approx = "meanfield",
             control = vb_control(quiet = TRUE, sgvb_maxit = 3000)), check = fz_fit),
    fz_ok(vb(y ~ x, data = d, control = vb_control(maxit = 1)), check = fz_fit,
          label = "maxit = 1: not converged, and a warning says so")
  ),
  vb_fit = list(
    fz_err(vb_fit(as.data.frame(X), d$y)), fz_err(vb_fit(matrix("1", n, 2), d$y)), fz_err(vb_fit(X[, 2], d$y)),
    fz_err(vb_fit(X + 0i, d$y)), fz_err(vb_fit(replace(X, 3, NA), d$y)), fz_err(vb_fit(replace(X, 3, Inf), d$y)),
    fz_err(vb_fit(X[0, ], numeric(0))), fz_err(vb_fit(X, d$y[-1])), fz_err(vb_fit(X, as.character(d$y))),
    fz_err(vb_fit(X, as.list(d$y))), fz_err(vb_fit(X, replace(d$y, 2, NA))), fz_err(vb_fit(X, replace(d$y, 2, Inf))),
    fz_err(vb_fit(X, factor(d$cnt))),
    fz_err(vb_fit(X, d$y, weights = rep("1", n)), label = "vb_fit: character weights"),
    fz_err(vb_fit(X, d$y, weights = factor(rep(1, n)))), fz_err(vb_fit(X, d$y, weights = replace(rep(1, n), 1, NA))),
    fz_err(vb_fit(X, d$y, weights = replace(rep(1, n), 1, Inf))), fz_err(vb_fit(X, d$y, weights = replace(rep(1, n), 1, -1))),
    fz_err(vb_fit(X, d$y, weights = rep(1, 3))),
    fz_err(vb_fit(X, d$y, offset = rep("0", n))), fz_err(vb_fit(X, d$y, offset = replace(rep(0, n), 1, NA))),
    fz_err(vb_fit(X, d$y, offset = rep(0, 3))),
    fz_err(vb_fit(X, d$cnt + 0.5, family = poisson()), label = "vb_fit: non-integer poisson counts"),
    fz_err(vb_fit(X, -d$cnt - 1, family = poisson())),
    fz_err(vb_fit(X, d$succ, family = binomial(), weights = rep(4.5, n)), label = "vb_fit: fractional binomial trials"),
    fz_err(vb_fit(X, d$succ + 0.5, family = binomial(), weights = d$trials)),
    fz_err(vb_fit(X, d$trials + 1, family = binomial(), weights = d$trials)),
    fz_err(vb_fit(X, -d$bin, family = binomial())), fz_err(vb_fit(X, 2 * d$bin + 1, family = binomial())),
    fz_err(vb_fit(X, 0 * d$bin, family = binomial(), weights = rep(0, n)), label = "vb_fit: all-zero binomial weights"),
    fz_err(vb_fit(X, d$y, exposure = d$ex), label = "vb_fit: exposure with the gaussian family"),
    fz_err(vb_fit(X, d$bin, family = binomial(), exposure = d$ex)),
    fz_err(vb_fit(X, d$cnt, family = poisson(), exposure = c(1, 2, 3)), label = "vb_fit: exposure of the wrong length"),
    fz_err(vb_fit(X, d$cnt, family = poisson(), exposure = rep("1", n))),
    fz_err(vb_fit(X, d$cnt, family = poisson(), exposure = replace(d$ex, 1, -1))),
    fz_err(vb_fit(X, d$cnt, family = poisson(), exposure = replace(d$ex, 1, NA))),
    fz_ok(vb_fit(X, d$cnt, family = poisson(), exposure = 0.5), check = fz_fit),
    fz_ok(vb_fit(X, d$y, control = list(maxit = 50, quiet = TRUE)), check = fz_fit,
          label = "vb_fit accepts a plain list control"),
    fz_err(vb_fit(X, d$y, control = list(maxit = 1e10))), fz_err(vb_fit(X, d$y, control = "a")),
    fz_ok(vb_fit(matrix(0, n, 0), d$y), check = zero_coef_fit),
    fz_ok(vb_fit(matrix(0, n, 0), d$cnt, family = poisson()), check = zero_coef_fit),
    fz_ok(vb_fit(cbind(X, X), d$y), check = fz_fit, label = "vb_fit: duplicated columns"),
    fz_ok(vb_fit(cbind(1, matrix(rnorm(10 * 20), 10)), d$y[1:10]), check = fz_fit, label = "vb_fit: p > n"),
    fz_err(vb_fit(X, d$y, prior = normal(0, 1e-200))), fz_err(vb_fit(X, d$y, prior = normal(1e300, 1))),
    fz_err(vb_fit(X, d$cnt, family = poisson(), prior_intercept = normal(0, 1e-200))),
    fz_err(vb_fit(X, d$y, prior = normal(0, c(1, 2, 3)))),
    fz_either(vb_fit(X, d$y, prior_precision = gamma_prior(1e-300, 1e300)), check = fz_fit)
  ),
  methods = list(
    fz_ok(coef(fit_g)), fz_ok(vcov(fit_g)), fz_ok(confint(fit_g)), fz_ok(confint(fit_g, "x")),
    fz_err(confint(fit_g, level = 1)), fz_err(confint(fit_g, level = NA)), fz_err(confint(fit_g, level = "a")),
    fz_err(confint(fit_g, parm = "zz")), fz_err(confint(fit_g, parm = 10)),
    fz_ok(summary(fit_g)$coefficients), fz_err(summary(fit_g, level = 2)),
    fz_ok(predict(fit_g)), fz_ok(predict(fit_g, data.frame(x = c(1, 2)), interval = "credible")),
    fz_err(predict(fit_g, type = "bogus")), fz_err(predict(fit_g, interval = "bogus")),
    fz_err(predict(fit_g, level = 0, interval = "credible")),
    fz_err(predict(fit_g, interval = "prediction", nsim = 0)),
    fz_err(predict(fit_g, interval = "prediction", nsim = NA)),
    fz_err(predict(fit_g, newdata = data.frame(z = 1)), allow = "object 'x' not found"), fz_err(predict(fit_g, newdata = "a")),
    fz_ok(predict(fit_p, data.frame(x = 1), type = "response", interval = "prediction")),
    fz_ok(predict(fit_b, type = "response", interval = "credible")[, "fit"], check = in01),
    fz_ok(fitted(fit_g)), fz_ok(residuals(fit_b)), fz_ok(fitted(fit_xf)),
    fz_ok(simulate(fit_g, 2, seed = 1)), fz_err(simulate(fit_g, 0)), fz_err(simulate(fit_g, -1)),
    fz_err(simulate(fit_g, 1.5)), fz_err(simulate(fit_g, "a")), fz_err(simulate(fit_g, NA)),
    fz_err(simulate(fit_g, 1e10)),
    fz_ok(draws(fit_g, 10), check = nrows_is(10)), fz_err(draws(fit_g, 0)), fz_err(draws(fit_g, NA)),
    fz_err(draws(fit_g, "a")), fz_err(draws(fit_g, -5)), fz_err(draws(fit_g, 1e10)),
    fz_ok(elbo(fit_g, terms = TRUE)), fz_err(elbo(list())), fz_err(elbo(1)), fz_err(elbo("a")), fz_err(elbo(NULL)),
    fz_err(predict(fit_xf), pattern = "x = TRUE|newdata", label = "predict() on an x = FALSE fit"),
    fz_err(simulate(fit_xf), pattern = "x = TRUE|newdata", label = "simulate() on an x = FALSE fit"),
    fz_err(bits_per_spike(fit_pxf), pattern = "x = TRUE|newdata", label = "bits_per_spike() on an x = FALSE fit"),
    fz_ok(nobs(fit_g), check = function(v, w) identical(as.integer(v), 40L)),
    fz_ok(tidy(fit_g)[, -1]), fz_ok(glance(fit_g)),
    fz_ok(coef(dens)), fz_ok(vcov(dens)), fz_ok(confint(dens)), fz_ok(draws(dens, 5), check = nrows_is(5)),
    fz_ok(summary(dens)$coefficients), fz_ok(elbo(dens)),
    fz_err(predict(dens), pattern = "vb_density|vbdensity|no applicable method|no data",
           label = "predict() on a vb_density() fit (it has no data)"),
    fz_err(simulate(dens), pattern = "vb_density|vbdensity|no applicable method|no data",
           label = "simulate() on a vb_density() fit (it has no data)")
  ),
  compare_models = list(
    fz_err(compare_models(fit_g)), fz_err(compare_models()), fz_err(compare_models(fit_g, 1)),
    fz_err(compare_models(fit_g, fit_p)), fz_err(compare_models(fit_g, fit_g2, prior_prob = c(-1, 2))),
    fz_err(compare_models(fit_g, fit_g2, prior_prob = c(NA, 1))), fz_err(compare_models(fit_g, fit_g2, prior_prob = 1)),
    fz_err(compare_models(fit_g, fit_g2, iwae = NA)), fz_err(compare_models(fit_g, fit_g2, iwae = "yes")),
    fz_err(compare_models(a = fit_g, a = fit_g2)), fz_err(compare_models(fit_g, lds1)),
    fz_ok(as.data.frame(compare_models(a = fit_g, b = fit_g2))[, -1]),
    fz_ok(as.data.frame(compare_models(a = fit_g, b = fit_g2, iwae = TRUE))[, -1]),
    fz_ok(as.data.frame(compare_models(list(a = fit_g, b = fit_g2)))[, -1]),
    fz_ok(as.data.frame(compare_models(one = lds1, two = lds2))[, c("elbo", "delta", "prob")],
          label = "compare_models() on vb_lds() fits"),
    fz_ok(as.data.frame(anova(fit_g, fit_g2))[, -1])
  ),
  bms = list(
    fz_err(bms(replace(lme, 1, NA))), fz_err(bms(replace(lme, 1, NaN))), fz_err(bms(replace(lme, 1, Inf))),
    fz_err(bms(replace(lme, 1, -Inf))), fz_err(bms(matrix(as.character(lme), 5))), fz_err(bms(lme[, 1, drop = FALSE])),
    fz_err(bms(lme[0, ])), fz_err(bms(list())), fz_err(bms(data.frame(a = letters[1:3], b = 1:3))),
    fz_err(bms(c(-1, -2))), fz_err(bms(lme + 1i)),
    fz_err(bms(lme, alpha0 = 0)), fz_err(bms(lme, alpha0 = -1)), fz_err(bms(lme, alpha0 = NA)),
    fz_err(bms(lme, alpha0 = Inf)), fz_err(bms(lme, alpha0 = c(1, 2, 3))), fz_err(bms(lme, alpha0 = "foo")),
    fz_err(bms(lme, tol = 0)), fz_err(bms(lme, tol = NA)), fz_err(bms(lme, maxit = 0)),
    fz_err(bms(lme, maxit = 1e10)), fz_err(bms(lme, maxit = NA)), fz_err(bms(lme, families = 1)),
    fz_err(bms(lme, families = list(1, 3))), fz_err(bms(lme, bogus = 1)),
    fz_ok(bms(lme, alpha0 = 1e100), check = bor_limit, label = "bms(alpha0 = 1e100): omnibus risk at its limit 1/2"),
    fz_ok(bms(lme, alpha0 = "vba")[c("alpha", "exceedance", "protected_exceedance", "omnibus_risk")]),
    fz_ok(bms(lme[1, , drop = FALSE])[c("alpha", "exceedance", "omnibus_risk")]),
    fz_ok(bms(lme * 1e5)[c("alpha", "exceedance", "omnibus_risk", "free_energy")])
  ),
  vb_density = list(
    fz_err(vb_density("f", init = 1)), fz_err(vb_density(ld, init = c(NA, 1))), fz_err(vb_density(ld, init = c("a", "b"))),
    fz_err(vb_density(ld, init = numeric(0))), fz_err(vb_density(function(th) NA, init = c(1, 1))),
    fz_err(vb_density(function(th) c(1, 2), init = c(1, 1))), fz_err(vb_density(function(th) "a", init = c(1, 1))),
    fz_err(vb_density(ld, init = c(1, 1), gradient = "a")),
    fz_err(vb_density(ld, init = c(1, 1), gradient = function(th) c(NA_integer_, NA_integer_))),
    fz_err(vb_density(ld, init = c(1, 1), gradient = function(th) 1)),
    fz_err({ k <- 0L; vb_density(ld, init = c(1, 1), control = dctl,
                                 gradient = function(th) { k <<- k + 1L; if (k <= 5L) gr(th) else c(NA_integer_, NA_integer_) }) },
           label = "vb_density: gradient returns integer NA during the run",
           allow = "gradient"),
    fz_err({ k <- 0L; vb_density(ld, init = c(1, 1), control = dctl,
                                 gradient = function(th) { k <<- k + 1L; if (k <= 5L) gr(th) else c(NA, NA) }) },
           label = "vb_density: gradient returns logical NA during the run",
           allow = "gradient"),
    fz_err({ k <- 0L; vb_density(ld, init = c(1, 1), control = dctl,
                                 gradient = function(th) { k <<- k + 1L; if (k <= 5L) gr(th) else 1 }) },
           label = "vb_density: gradient of the wrong length during the run",
           allow = "gradient"),
    fz_err({ k <- 0L; vb_density(function(th) { k <<- k + 1L; if (k > 20L) stop("boom in the user's density"); ld(th) },
                                 init = c(1, 1), gradient = gr, control = dctl) },
           label = "vb_density: the log density raises an error during the run"),
    fz_err(vb_density(ld, init = c(1, 1), approx = "bogus")), fz_err(vb_density(ld, init = c(1, 1), estimator = "bogus")),
    fz_err(vb_density(ld, init = c(1, 1), control = vb_control(sgvb_maxit = 0))),
    fz_ok(vb_density(function(th) -th^2 / 2, init = c(a = 1), control = dctl), check = fz_fit),
    fz_ok(vb_density(ld, init = c(1, 1), control = list(sgvb_maxit = 2000, quiet = TRUE)), check = fz_fit),
    fz_ok(vb_density(ld, init = c(1, 1), approx = "meanfield", estimator = "score", control = dctl), check = fz_fit)
  ),
  vb_diagnose = list(
    fz_err(vb_diagnose(1)), fz_err(vb_diagnose(fit_g, S = 5)), fz_err(vb_diagnose(fit_g, S = NA)),
    fz_err(vb_diagnose(fit_g, S = 1e10)), fz_err(vb_diagnose(fit_g, K = 0)), fz_err(vb_diagnose(fit_g, K = 5000)),
    fz_err(vb_diagnose(fit_g, K = NA)), fz_err(vb_diagnose(fit_g, K = 1.5)),
    fz_ok(vb_diagnose(fit_g, S = 400)[c("iwae", "iwae_se", "elbo_mc", "logZ_psis")]),
    fz_ok(vb_diagnose(fit_b, S = 400)[c("iwae", "iwae_se", "elbo_mc", "logZ_psis")]),
    fz_ok(vb_diagnose(dens, S = 400)[c("iwae", "iwae_se", "elbo_mc", "logZ_psis")]),
    fz_ok(vb_diagnose(lds1, S = 200, K = c(1, 10))[c("iwae", "elbo_mc", "logZ_psis")],
          label = "vb_diagnose() on a vb_lds() fit")
  ),
  vb_lds = list(
    fz_err(vb_lds(Y, 0)), fz_err(vb_lds(Y, 3)), fz_err(vb_lds(Y, 1.5)), fz_err(vb_lds(Y, NA)), fz_err(vb_lds(Y, "1")),
    fz_err(vb_lds(replace(Y, 4, Inf), 1)), fz_err(vb_lds(replace(Y, 4, NaN), 1)),
    fz_err(vb_lds(matrix(as.character(Y), 60), 1)), fz_err(vb_lds(list(Y, Y[, 1:2]), 1)), fz_err(vb_lds(list(), 1)),
    fz_err(vb_lds(Y[0, ], 1)), fz_err(vb_lds(Y, 1, family = binomial())),
    fz_err(vb_lds(-Ycnt, 1, family = poisson())), fz_err(vb_lds(Ycnt + 0.5, 1, family = poisson())),
    fz_err(vb_lds(Y, 1, exposure = 0.1)), fz_err(vb_lds(Ycnt, 1, family = poisson(), exposure = 0)),
    fz_err(vb_lds(Ycnt, 1, family = poisson(), exposure = rep(1, 7))),
    fz_err(vb_lds(Ycnt, 1, family = poisson(), exposure = NA)),
    fz_err(vb_lds(Y, 1, learn = FALSE)), fz_err(vb_lds(Y, 1, learn = "Z")), fz_err(vb_lds(Y, 1, learn = "C")),
    fz_err(vb_lds(Y, 1, learn = FALSE, params = modifyList(lds1$params, list(Q = matrix(-1))))),
    fz_err(vb_lds(Y, 1, learn = FALSE, params = modifyList(lds1$params, list(A = diag(2))))),
    fz_err(vb_lds(Y, 1, learn = FALSE, params = modifyList(lds1$params, list(R = c(1, -1, 1))))),
    fz_err(vb_lds(Y, 1, control = vb_control(maxit = 1e10))),
    fz_either(vb_lds(Y[1, , drop = FALSE], 1, control = quiet), check = warned,
              label = "vb_lds with T = 1 (learning every parameter): refused, or flagged by a warning"),
    fz_either(vb_lds(Y[1:2, ], 1, control = quiet), check = warned,
              label = "vb_lds with T = 2 (learning every parameter): refused, or flagged by a warning"),
    fz_ok(vb_lds(replace(Y, c(3, 70, 100), NA), 1, control = vb_control(maxit = 30, quiet = TRUE))[c("elbo", "elbo_trace")]),
    fz_ok(vb_lds(Y, 1, approx = "meanfield", control = vb_control(maxit = 30, quiet = TRUE))[c("elbo", "elbo_trace")]),
    fz_ok(vb_lds(Ycnt, 1, family = poisson(), control = vb_control(maxit = 30, quiet = TRUE))[c("elbo", "elbo_trace")]),
    fz_ok(vb_lds(Y, 1, control = list(maxit = 20, quiet = TRUE))[c("elbo", "elbo_trace")]),
    fz_err(predict(lds1, type = "bogus")), fz_err(predict(lds1, newdata = Y[, 1:2])),
    fz_err(simulate(lds1, nsim = 0)), fz_err(simulate(lds1, T = 0)), fz_err(simulate(lds1, T = NA)),
    fz_ok(simulate(lds1, nsim = 2, T = 5)), fz_ok(predict(lds1, type = "latent")), fz_ok(fitted(lds1)),
    fz_ok(elbo(lds1))
  ),
  spikes = list(
    fz_err(bin_spikes(c(0.1, NA), 0.1)), fz_err(bin_spikes(c(0.3, 0.1), 0.1)), fz_err(bin_spikes("a", 0.1)),
    fz_err(bin_spikes(c(0.1, 0.2), 0)), fz_err(bin_spikes(c(0.1, 0.2), Inf)), fz_err(bin_spikes(c(0.1, 0.2), 0.1, start = 1, end = 0.5)),
    fz_err(bin_spikes(list(), 0.1)), fz_err(bin_spikes(list(0.1, "a"), 0.1)), fz_err(bin_spikes(c(0.1, 0.2), 0.1, by = "bogus")),
    fz_err(bin_spikes(c(0.1, 0.2), 1e-300, start = 0, end = 1), label = "bin_spikes with more bins than an integer holds"),
    fz_err(bin_spikes(c(0.1, 0.2), 0.3, start = 0, end = 1)),
    fz_ok(bin_spikes(numeric(0), 0.1), check = function(v, w) if (NROW(v) >= 1L && sum(v$spikes) == 0) TRUE else "wrong counts"),
    fz_err(raised_cosine_basis(0, c(0.1, 1), 0.5, 0.01)), fz_err(raised_cosine_basis(NA, c(0.1, 1), 0.5, 0.01)),
    fz_err(raised_cosine_basis(3, c(1, 0.1), 0.5, 0.01)), fz_err(raised_cosine_basis(3, 0.1, 0.5, 0.01)),
    fz_err(raised_cosine_basis(3, c(0.1, 1), 0, 0.01)), fz_err(raised_cosine_basis(3, c(0.1, 1), 0.5, 0)),
    fz_err(raised_cosine_basis(3, c(0.1, 1), 0.5, 1e-12)), fz_err(raised_cosine_basis(1e10, c(0.1, 1), 0.5, 0.01)),
    fz_ok(raised_cosine_basis(1, c(0.1, 1), 0.5, 0.01)),
    fz_err(history(letters, diag(2))), fz_err(history(c(1, NA, 0), diag(2))), fz_err(history(c(0, 1, 0), matrix("a", 2, 2))),
    fz_err(history(c(0, 1, 0), matrix(c(1, NA), 2, 1))), fz_err(history(c(0, 1, 0), diag(2), first_lag = -1)),
    fz_err(history(c(0, 1, 0), diag(2), first_lag = 1.5)), fz_err(history(c(0, 1, 0), diag(2), first_lag = 1e10)),
    fz_err(history(c(0, 1, 0), diag(2), trial = 1:2)), fz_err(history(c(0, 1, 0), diag(2), trial = c(1, NA, 1))),
    fz_err(history(c(0, 1, 0), matrix(0, 0, 2))), fz_err(history(list(0, 1), diag(2))),
    fz_either(history(numeric(0), diag(2)), check = nrows_is(0)),
    fz_ok(history(c(0, 1, 0, 2, 0), diag(2), first_lag = 100), check = nrows_is(5)),
    fz_ok(bits_per_spike(fit_hist)), fz_err(bits_per_spike(1)), fz_err(bits_per_spike(fit_g)),
    fz_err(bits_per_spike(fit_hist, null = "bogus")),
    fz_err(bits_per_spike(fit_hist, newdata = transform(neuron[1501:1700, ], spikes = 0))),
    fz_err(bits_per_spike(fit_hist, newdata = data.frame(a = 1)), allow = "object 'stim' not found"),
    fz_ok(simulate_spikes(fit_hist, nd[1:300, ], seed = 1), check = nrows_is(300)),
    fz_err(simulate_spikes(fit_hist, nd, nsim = 0)), fz_err(simulate_spikes(fit_hist, nd, max_count = -1)),
    fz_err(simulate_spikes(fit_hist, nd, max_count = NA)), fz_err(simulate_spikes(fit_hist, nd, coef = "bogus")),
    fz_err(simulate_spikes(fit_hist, nd[0, ])), fz_err(simulate_spikes(fit_p, d)), fz_err(simulate_spikes(fit_g, d)),
    fz_err(simulate_spikes(1)),
    fz_ok(filters(fit_hist)), fz_err(filters(fit_hist, level = 2)), fz_err(filters(fit_p)), fz_err(filters(1))
  )
)
for (tp in fuzz_topics) if (is.function(tp$cases)) cases <- c(cases, tp$cases())

# Garbage into every registered .Call entry point (whatever the engines are
# called): each argument NULL, a string, an empty or poisoned named list, NA,
# a zero-length vector, a 0 x 0 matrix.  Only a crash fails.
poisoned <- list(A = "a", C = NULL, D = list(), L = NA, Q = -1L, R = matrix(0, 0, 0), S = NaN,
                 V0 = Inf, X = "x", b = NA_integer_, d = TRUE, family = 99L, fn = 1, gh_w = NULL,
                 gh_x = numeric(0), glm = list(), gr = "f", joint_means = -5, m = NA, m0 = list(1),
                 maxit = 1e10, offset = Inf, prior_location = NA, prior_scale = -1, prior_type = 7L,
                 quiet = NA, tau_prior = "g", tol = -1, type = "zz", weights = -1, y = c(NA, 1))
garbage <- list("NULL" = NULL, string = "a", empty_list = list(), poisoned_list = poisoned,
                na = NA_real_, zero_length = integer(0), empty_matrix = matrix(0, 0, 0))
fx$routines <- tryCatch(getDLLRegisteredRoutines("vbayes")$.Call, error = function(e) list())
cases$dotcall <- unlist(lapply(names(fx$routines), function(nm) {
  k <- fx$routines[[nm]]$numParameters
  lapply(names(garbage), function(g) {
    args <- rep(list(garbage[[g]]), k)
    list(expr = as.call(c(list(quote(.Call), call("[[", quote(routines), nm)), args)),
         expect = "no_crash", check = NULL, pattern = NULL, allow = NULL,
         label = sprintf(".Call(%s, <%d x %s>)", nm, k, g))
  })
}), recursive = FALSE)

# Mutants of real .Call argument lists (recorded from valid fits): one slot
# at a time made NULL, a string, NA, empty, shorter, longer, negative, huge.
recorded <- fz_record_calls(env = fx, workload = c(alist(
  vb(y ~ x, data = d, control = quiet),
  vb(y ~ x + x2, data = d, approx = "meanfield", prior = laplace(0, 1), control = quiet),
  vb(cnt ~ x, data = d, family = poisson(), exposure = ex, approx = "block", control = quiet),
  vb(bin ~ x, data = d, family = binomial(), control = quiet),
  vb(bin ~ x, data = d, family = binomial(), control = vb_control(binomial_method = "jj", quiet = TRUE)),
  vb(y ~ x, data = d, method = "sgvb", control = vb_control(quiet = TRUE, sgvb_maxit = 500)),
  vb_diagnose(fit_g, S = 50, K = 1),
  vb_density(ld, init = c(a = 1, b = -1), gradient = gr, control = vb_control(quiet = TRUE, sgvb_maxit = 500)),
  vb_lds(Y[1:30, ], 1, control = vb_control(maxit = 3, quiet = TRUE)),
  vb_lds(Ycnt[1:30, ], 1, family = poisson(), control = vb_control(maxit = 3, quiet = TRUE)),
  history(nd$spikes[1:200], B, nd$trial[1:200]),
  simulate_spikes(fit_hist, nd[1:200, ], seed = 1)
), fuzz_topic_workload))
keep <- unlist(lapply(split(seq_along(recorded), vapply(recorded, `[[`, "", "name")), head, 2L))
mutants <- unlist(lapply(recorded[sort(keep)], fz_mutants), recursive = FALSE)

# ---- run every case in a child, then judge ----------------------------------
all_cases <- unlist(cases, recursive = FALSE)
group_of <- rep(names(cases), lengths(cases))
t0 <- proc.time()[["elapsed"]]
outcomes <- fz_run_all(all_cases, fx, cores = 2L, timeout = 120)
mut_outcomes <- fz_run_all(mutants, fx, cores = 2L, timeout = 120)
fuzz_seconds <- proc.time()[["elapsed"]] - t0

test_that("no .Call entry point crashes on mutated arguments", {
  expect_gt(length(unique(vapply(recorded, `[[`, "", "name"))), 5L)
  routine <- sub(":.*", "", vapply(mutants, `[[`, "", "label"))
  for (r in unique(routine)) {
    idx <- which(routine == r)
    bad <- Filter(Negate(is.null), lapply(idx, function(i) {
      v <- fz_verdict(mutants[[i]], mut_outcomes[[i]])
      if (!is.null(v)) sprintf("%s: %s", mutants[[i]]$label, v)
    }))
    expect(length(bad) == 0L, sprintf("[dotcall] %d of %d mutants of %s crashed:\n  %s", length(bad), length(idx), r,
                                      paste(unlist(bad), collapse = "\n  ")))
  }
})

test_that("the fuzz suite has at least 150 cases over every exported function", {
  expect_gte(length(all_cases), 150L)
  exported <- getNamespaceExports("vbayes")
  called <- unique(unlist(lapply(all_cases, function(k) all.names(k$expr))))
  expect_gt(length(cases$dotcall), 0L)
  expect_equal(setdiff(exported, called), character(0))
})

for (g in names(cases)) {
  test_that(sprintf("fuzz: %s", g), {
    idx <- which(group_of == g)
    for (i in idx) {
      v <- fz_verdict(all_cases[[i]], outcomes[[i]])
      expect(is.null(v), sprintf("[%s] %s\n  expected %s; %s", g, all_cases[[i]]$label, all_cases[[i]]$expect,
                                 if (is.null(v)) "" else v))
    }
  })
}

if (nzchar(Sys.getenv("VBAYES_FUZZ_REPORT"))) {
  rep <- data.frame(group = group_of,
                    case = vapply(all_cases, `[[`, "", "label"),
                    expect = vapply(all_cases, `[[`, "", "expect"),
                    verdict = vapply(seq_along(all_cases), function(i) {
                      v <- fz_verdict(all_cases[[i]], outcomes[[i]])
                      if (is.null(v)) "pass" else v
                    }, ""),
                    outcome = vapply(outcomes, function(o) paste(o$kind, if (is.null(o$message)) "" else o$message,
                                                                if (length(o$origin) && nzchar(o$origin)) paste("| raised in:", o$origin) else ""), ""))
  mrep <- data.frame(group = "dotcall-mutant", case = vapply(mutants, `[[`, "", "label"), expect = "no_crash",
                     verdict = vapply(seq_along(mutants), function(i) {
                       v <- fz_verdict(mutants[[i]], mut_outcomes[[i]])
                       if (is.null(v)) "pass" else v
                     }, ""),
                     outcome = vapply(mut_outcomes, function(o) paste(o$kind, if (is.null(o$message)) "" else o$message), ""))
  utils::write.csv(rbind(rep, mrep), Sys.getenv("VBAYES_FUZZ_REPORT"), row.names = FALSE)
  message(sprintf("fuzz: %d cases and %d .Call mutants (%d recorded calls) in %.1f s",
                  length(all_cases), length(mutants), length(recorded), fuzz_seconds))
}
