# Spike-train toolkit: every expectation is against an independent reference
# (the issue's published test vectors, findInterval/tabulate, hand-shifted
# counts, a hand log-likelihood, an R loop with the same RNG stream, known
# simulation truth).

quiet <- vb_control(quiet = TRUE)

test_that("raised_cosine_basis matches the reference test vectors", {
  B <- raised_cosine_basis(5, peaks = c(0.1, 2), offset = 0.5, binwidth = 0.01)
  expect_equal(dim(B), c(460L, 5L))
  rows <- c(1, 10, 50, 200)                    # t = 0.01, 0.10, 0.50, 2.00
  ref <- rbind(c(0.877375, 0.171993, 0, 0, 0),
               c(1, 0.5, 0, 0, 0),
               c(0.186295, 0.889344, 0.813705, 0.110656, 0),
               c(0, 0, 0, 0.5, 1))
  expect_equal(unname(B[rows, ]), ref, tolerance = 1e-6, ignore_attr = TRUE)
  expect_equal(max(abs(B[rows, ] - ref)), 0, tolerance = 1e-6)
  expect_equal(attr(B, "time")[rows], c(0.01, 0.1, 0.5, 2))
  # each bump spans 4 db, so between the 2nd and 4th centres four bumps at
  # quarter-period phase shifts overlap and sum to exactly 2
  ctr <- log(c(0.1, 2) + 0.5)
  cc <- seq(ctr[1], ctr[2], length.out = 5)
  x <- log(attr(B, "time") + 0.5)
  inside <- x >= cc[2] & x <= cc[4]
  expect_gt(sum(inside), 50)
  expect_equal(unname(rowSums(B)[inside]), rep(2, sum(inside)), tolerance = 1e-12)
  # the last row is the last lag before the last bump returns to zero:
  # exp(c_n + 2 db) - offset with c_n = log 2.5, db = (log 2.5 - log 0.6) / 4
  db <- (log(2.5) - log(0.6)) / 4
  expect_equal(nrow(B), floor((exp(log(2.5) + 2 * db) - 0.5) / 0.01))
})

test_that("bin_spikes agrees with findInterval/tabulate and uses half-open bins", {
  set.seed(1)
  tt <- sort(runif(500, -0.2, 2.2))
  tt <- c(tt, 0.5, 1.0)                       # exactly on bin edges
  tt <- sort(tt)
  expect_message(b <- bin_spikes(tt, binwidth = 0.1, start = 0, end = 2),
                 sprintf("dropped %d spikes", sum(tt < 0 | tt >= 2)))
  br <- seq(0, 2, by = 0.1)
  k <- findInterval(tt, br)
  ref <- tabulate(k[k >= 1 & k <= 20], 20)
  expect_equal(b$spikes, ref)
  expect_equal(sum(b$spikes), sum(tt >= 0 & tt < 2))
  expect_equal(b$time, br[-21])
  # edges: a spike at 0.5 opens bin 6 ([0.5, 0.6)); a spike at `end` is dropped
  e <- bin_spikes(c(0, 0.5, 0.99999, 1), binwidth = 0.5, start = 0, end = 1) |>
    suppressMessages()
  expect_equal(e$spikes, c(1L, 2L))
  expect_message(bin_spikes(c(0, 0.5, 1), 0.5, 0, 1), "dropped 1 spike outside")
  # lists: trials stacked, neurons side by side
  tr <- list(c(0.01, 0.02, 0.25), c(0.11))
  lt <- bin_spikes(tr, binwidth = 0.1, start = 0, end = 0.3)
  expect_equal(lt$trial, rep(1:2, each = 3))
  expect_equal(lt$spikes, c(2, 0, 1, 0, 1, 0))
  nt <- bin_spikes(list(a = tr[[1]], b = tr[[2]]), 0.1, 0, 0.3, by = "neuron")
  expect_equal(names(nt), c("time", "a", "b"))
  expect_equal(nt$a, c(2, 0, 1)); expect_equal(nt$b, c(0, 1, 0))
  # default end: the first bin edge after the last spike
  expect_equal(nrow(bin_spikes(c(0.05, 0.31), 0.1)), 4L)
  # real spike times (boot::neuro, ms): every spike lies in [-250, 250)
  skip_if_not_installed("boot")
  neuro <- boot::neuro
  trials <- lapply(seq_len(nrow(neuro)), function(i) as.numeric(na.omit(neuro[i, ])))
  nb <- bin_spikes(trials, binwidth = 5, start = -250, end = 250)
  expect_equal(nrow(nb), 100 * nrow(neuro))
  expect_equal(sum(nb$spikes), sum(!is.na(neuro)))
})

test_that("history columns are the counts shifted by the stated lags", {
  y <- c(0, 1, 0, 2, 0, 0, 1, 3)
  shift <- function(v, l) c(rep(0, l), head(v, -l))
  H <- spike_history(y, diag(3))
  expect_equal(unname(H[, 1]), shift(y, 1))
  expect_equal(unname(H[, 2]), shift(y, 2))
  expect_equal(unname(H[, 3]), shift(y, 3))
  expect_equal(colnames(H), c("h1", "h2", "h3"))
  # a general basis: H = sum_l B[l, ] y[t - l], by hand
  B <- cbind(c(1, 0.5, 0.25), c(0, 1, -1))
  Hb <- spike_history(y, B)
  byhand <- sapply(1:2, function(j) B[1, j] * shift(y, 1) + B[2, j] * shift(y, 2) + B[3, j] * shift(y, 3))
  expect_equal(unname(unclass(Hb)[, 1:2]), byhand, ignore_attr = TRUE)
  # trials: no history crosses a boundary
  tr <- c(1, 1, 1, 1, 2, 2, 2, 2)
  Ht <- spike_history(y, diag(2), trial = tr)
  ref1 <- c(shift(y[1:4], 1), shift(y[5:8], 1))
  ref2 <- c(shift(y[1:4], 2), shift(y[5:8], 2))
  expect_equal(unname(Ht[, 1]), ref1)
  expect_equal(unname(Ht[, 2]), ref2)
  # first_lag: 0 includes the current bin, 2 skips one bin
  expect_equal(unname(spike_history(y, diag(1), first_lag = 0)[, 1]), y)
  expect_equal(unname(spike_history(y, diag(1), first_lag = 2)[, 1]), shift(y, 2))
  expect_equal(unname(spike_history(y, diag(2), first_lag = 100)), matrix(0, 8, 2), ignore_attr = TRUE)
  # no bin sees its own count: history of a single spike is zero at and before it
  e <- numeric(20); e[10] <- 1
  Bc <- raised_cosine_basis(3, c(0.01, 0.03), 0.01, 0.005)
  expect_true(all(spike_history(e, Bc)[1:10, ] == 0))
  expect_equal(unname(spike_history(e, Bc)[11:20, ]), unname(Bc[1:10, ]), ignore_attr = TRUE)
})

test_that("a history term is one term of the design (one block) and predicts on new data", {
  d <- neuron[1:4000, ]
  B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
  fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = d, family = poisson(),
            exposure = 0.005, approx = "block", control = quiet)
  X <- cbind(1, d$stim, spike_history(d$spikes, B, d$trial))
  expect_equal(unname(fit$x), unname(X), ignore_attr = TRUE)
  expect_equal(fit$blocks, c(0L, 1L, 2L, 2L, 2L, 2L))
  # predict() re-evaluates spike_history() on new data: the fitted rows reproduce
  # the fitted linear predictor, computed here by hand
  p <- predict(fit, d[1:500, ])
  expect_equal(unname(p), drop(X[1:500, ] %*% coef(fit)) + log(0.005), tolerance = 1e-10)
})

test_that("filters() is B mu with the band of B Sigma B'", {
  B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
  fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = neuron[1:4000, ],
            family = poisson(), exposure = 0.005, control = quiet)
  f <- filters(fit, level = 0.9)
  idx <- 3:6
  V <- B %*% fit$vcov[idx, idx] %*% t(B)      # dense reference
  expect_equal(f[[1]]$estimate, unname(drop(B %*% coef(fit)[idx])))
  expect_equal(f[[1]]$sd, sqrt(diag(V)), ignore_attr = TRUE)
  expect_equal(f[[1]]$upper - f[[1]]$estimate, qnorm(0.95) * sqrt(diag(V)), ignore_attr = TRUE)
  expect_equal(f[[1]]$lag, seq_len(nrow(B)))
  expect_equal(f[[1]]$time, attr(B, "time"))
  pdf(NULL); on.exit(dev.off())
  expect_identical(plot(f, scale = "gain"), f)
})

test_that("the simulated neuron's history and stimulus filters are recovered", {
  tr <- attr(neuron, "truth")
  fit <- vb(spikes ~ stim + spike_history(spikes, diag(10), trial), data = neuron,
            family = poisson(), exposure = 0.005, control = quiet)
  f <- filters(fit, level = 0.99)[[1]]
  expect_true(all(tr$history_filter > f$lower & tr$history_filter < f$upper))
  ci <- confint(fit, level = 0.99)
  expect_true(ci["stim", 1] < tr$stim_gain && tr$stim_gain < ci["stim", 2])
  expect_true(ci[1, 1] < log(tr$baseline_hz) && log(tr$baseline_hz) < ci[1, 2])
  # a stimulus filter over lags 0-2: the truth is instantaneous, c(0.8, 0, 0)
  fs <- vb(spikes ~ spike_history(stim, diag(3), trial, first_lag = 0) + spike_history(spikes, diag(10), trial),
           data = neuron, family = poisson(), exposure = 0.005, control = quiet)
  g <- filters(fs, level = 0.99)[[1]]
  expect_equal(g$lag, 0:2)
  expect_true(all(c(tr$stim_gain, 0, 0) > g$lower & c(tr$stim_gain, 0, 0) < g$upper))
})

test_that("coupling filters of the population are recovered and absent ones cover zero", {
  tr <- attr(population, "truth")$filters
  fit <- vb(n2 ~ stim + spike_history(n2, diag(8), trial) + spike_history(n1, diag(8), trial) +
              spike_history(n3, diag(8), trial), data = population, family = poisson(),
            exposure = 0.005, control = quiet)
  # with one weight per lag the filter is the coefficient vector, so the
  # truth must lie in the joint 99.9% credible ellipsoid of q (chi-square, 8 df)
  inside <- function(term, truth) {
    i <- grep(term, names(coef(fit)), fixed = TRUE)
    b <- coef(fit)[i] - truth
    drop(t(b) %*% solve(vcov(fit)[i, i], b)) < qchisq(0.999, length(i))
  }
  expect_true(inside("spike_history(n1,", tr[1:8, "n1", "n2"]))   # excitation n1 -> n2
  expect_true(inside("spike_history(n2,", tr[1:8, "n2", "n2"]))   # refractoriness
  expect_true(inside("spike_history(n3,", rep(0, 8)))             # no n3 -> n2 coupling
  # the ELBO picks the true coupling: n1 for n2 and n2 (not n1) for n3
  B <- raised_cosine_basis(3, c(0.005, 0.03), 0.01, 0.005)
  e <- function(f) elbo(vb(f, data = population, family = poisson(), exposure = 0.005, control = quiet))
  e2 <- c(none = e(n2 ~ stim + spike_history(n2, B, trial)),
          n1 = e(n2 ~ stim + spike_history(n2, B, trial) + spike_history(n1, B, trial)),
          n1n3 = e(n2 ~ stim + spike_history(n2, B, trial) + spike_history(n1, B, trial) + spike_history(n3, B, trial)))
  expect_equal(names(which.max(e2)), "n1")
  e3 <- c(none = e(n3 ~ stim + spike_history(n3, B, trial)),
          n1 = e(n3 ~ stim + spike_history(n3, B, trial) + spike_history(n1, B, trial)),
          n2 = e(n3 ~ stim + spike_history(n3, B, trial) + spike_history(n2, B, trial)),
          n1n2 = e(n3 ~ stim + spike_history(n3, B, trial) + spike_history(n1, B, trial) + spike_history(n2, B, trial)))
  expect_equal(names(which.max(e3)), "n2")
})

test_that("bits_per_spike equals the hand computation", {
  d <- neuron[1:6000, ]
  test <- neuron[6001:9000, ]
  B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
  fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = d, family = poisson(),
            exposure = 0.005, control = quiet)
  Xt <- cbind(1, test$stim, spike_history(test$spikes, B, test$trial))
  lam <- 0.005 * exp(drop(Xt %*% coef(fit)))
  y <- test$spikes
  ll_m <- sum(dpois(y, lam, log = TRUE))
  r_train <- sum(d$spikes) / (0.005 * nrow(d))
  r_test <- sum(y) / (0.005 * nrow(test))
  ll_tr <- sum(dpois(y, r_train * 0.005, log = TRUE))
  ll_te <- sum(dpois(y, r_test * 0.005, log = TRUE))
  expect_equal(as.numeric(bits_per_spike(fit, test)), (ll_m - ll_tr) / (sum(y) * log(2)))
  expect_equal(as.numeric(bits_per_spike(fit, test, null = "test")), (ll_m - ll_te) / (sum(y) * log(2)))
  # training data by default
  Xd <- cbind(1, d$stim, spike_history(d$spikes, B, d$trial))
  lam_d <- 0.005 * exp(drop(Xd %*% coef(fit)))
  ref_d <- (sum(dpois(d$spikes, lam_d, log = TRUE)) -
              sum(dpois(d$spikes, r_train * 0.005, log = TRUE))) / (sum(d$spikes) * log(2))
  expect_equal(as.numeric(bits_per_spike(fit)), ref_d)
  # a Bernoulli fit against a constant spike probability
  d$any <- as.numeric(d$spikes > 0)
  fb <- vb(any ~ stim, data = d, family = binomial(), control = quiet)
  pb <- plogis(drop(cbind(1, d$stim) %*% coef(fb)))
  p0 <- mean(d$any)
  ref_b <- (sum(dbinom(d$any, 1, pb, log = TRUE)) - sum(dbinom(d$any, 1, p0, log = TRUE))) /
    (sum(d$any) * log(2))
  expect_equal(as.numeric(bits_per_spike(fb)), ref_b)
})

test_that("simulate_spikes feeds spikes back through the filter (R loop reference) and refits", {
  d <- neuron[1:3000, ]
  B <- raised_cosine_basis(3, c(0.005, 0.02), 0.01, 0.005)
  fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = d, family = poisson(),
            exposure = 0.005, control = quiet)
  cf <- coef(fit)
  h <- drop(B %*% cf[3:5])
  L <- length(h)
  set.seed(42)
  s <- simulate_spikes(fit, d, nsim = 1)
  # the same model in a plain R loop, same RNG stream
  set.seed(42)
  y <- numeric(nrow(d))
  for (t in seq_len(nrow(d))) {
    first <- min(which(d$trial == d$trial[t]))
    eta <- log(0.005) + cf[1] + cf[2] * d$stim[t]
    for (l in seq_len(min(L, t - first))) eta <- eta + h[l] * y[t - l]
    y[t] <- rpois(1, exp(eta))
  }
  expect_equal(s$sim_1, y)
  expect_equal(attr(s, "capped"), 0L)
  # refit to a long simulated train from a known filter: recovered within bands
  fit_all <- vb(spikes ~ stim + spike_history(spikes, diag(6), trial), data = neuron,
                family = poisson(), exposure = 0.005, control = quiet)
  truth <- filters(fit_all)[[1]]$estimate
  sim <- neuron
  sim$spikes <- simulate_spikes(fit_all, neuron, seed = 7)$sim_1
  refit <- vb(spikes ~ stim + spike_history(spikes, diag(6), trial), data = sim,
              family = poisson(), exposure = 0.005, control = quiet)
  g <- filters(refit, level = 0.99)[[1]]
  expect_true(all(truth > g$lower & truth < g$upper))
  ci <- confint(refit, "stim", level = 0.99)
  expect_true(ci[1] < coef(fit_all)[["stim"]] && coef(fit_all)[["stim"]] < ci[2])
  # an explosive self-excitation is capped and reported
  bad <- fit
  bad$coefficients[3:5] <- 5
  expect_warning(sb <- simulate_spikes(bad, d[1:300, ], max_count = 50), "unstable")
  expect_gt(attr(sb, "capped"), 0L)
  # posterior draws give different trains
  sd2 <- simulate_spikes(fit, d, nsim = 2, coef = "draw", seed = 1)
  expect_equal(dim(sd2), c(3000L, 2L))
})

test_that("bad input gets clear errors", {
  expect_error(bin_spikes(c(0.2, 0.1), 0.1, 0, 1), "not sorted")
  expect_error(bin_spikes(c(0.1, NA), 0.1, 0, 1), "NA, NaN or infinite")
  expect_error(bin_spikes(c(0.1, Inf), 0.1, 0, 1), "NA, NaN or infinite")
  expect_error(bin_spikes(list(0.1, c(0.3, 0.2)), 0.1, 0, 1), "element 2 of 'times' is not sorted")
  expect_error(bin_spikes(0.1, 0, 0, 1), "'binwidth' must be one finite positive")
  expect_error(bin_spikes(0.1, -1, 0, 1), "'binwidth' must be one finite positive")
  expect_error(bin_spikes(0.1, 0.1, 1, 1), "'end' must be greater than 'start'")
  expect_error(bin_spikes(0.1, 0.1, 1, 0), "'end' must be greater than 'start'")
  expect_error(bin_spikes(0.1, 0.3, 0, 1), "whole number of bins")
  expect_error(bin_spikes("a", 0.1), "numeric spike times")
  expect_error(raised_cosine_basis(0, c(0.1, 2), 0.5, 0.01), "'n' must be a whole number between 1 and 10000")
  expect_error(raised_cosine_basis(2.5, c(0.1, 2), 0.5, 0.01), "'n' must be a whole number between 1 and 10000")
  expect_error(raised_cosine_basis(5, c(2, 0.1), 0.5, 0.01), "'peaks' must be increasing")
  expect_error(raised_cosine_basis(5, c(0.1, 0.1), 0.5, 0.01), "'peaks' must be increasing")
  expect_error(raised_cosine_basis(5, 0.1, 0.5, 0.01), "'peaks' must be two")
  expect_error(raised_cosine_basis(5, c(0.1, 2), -1, 0.01), "'offset'")
  expect_error(raised_cosine_basis(5, c(0.1, 2), 0.5, 0), "'binwidth'")
  expect_error(spike_history(c(0, 1, NA), diag(2)), "'x' contains NA")
  expect_error(spike_history(c(0, 1), "a"), "'basis' must be a numeric matrix")
  expect_error(spike_history(c(0, 1, 0), diag(2), trial = 1:2), "'trial' has length 2 but 'x' has length 3")
  expect_error(spike_history(c(0, 1, 0), diag(2), first_lag = -1), "'first_lag'")
  # history of a variable of another length inside a formula
  other <- rpois(100, 1)
  expect_error(vb(spikes ~ spike_history(other, diag(3)), data = neuron[1:200, ], family = poisson(),
                  control = quiet), "lengths differ")
  # .Call arguments re-checked in C
  expect_error(.Call(vbayes:::C_spikes_history, 1:3, diag(2), integer(3), 1L), "double")
  expect_error(.Call(vbayes:::C_spikes_history, c(1, 2), diag(2), integer(3), 1L), "as long as")
  expect_error(.Call(vbayes:::C_spikes_simulate, matrix(0, 2, 1), matrix(0, 1, 2), integer(2), c(1, 10)),
               "one column per simulation")
  expect_error(.Call(vbayes:::C_spikes_simulate, matrix(0, 2, 1), matrix(0, 1, 1), integer(2), list(family = 3, cap = 10)),
               "family")
  expect_error(.Call(vbayes:::C_spikes_simulate, matrix(0, 2, 1), matrix(0, 1, 1), integer(2), list(family = 1e10, cap = 10)),
               "family")
  expect_error(.Call(vbayes:::C_spikes_simulate, matrix(0, 2, 1), matrix(0, 1, 1), integer(2), c(1, 10)),
               "named list")
  fit0 <- vb(spikes ~ stim, data = neuron[1:500, ], family = poisson(), exposure = 0.005, control = quiet)
  expect_error(filters(fit0), "no spike_history\\(\\) terms")
  expect_error(simulate_spikes(fit0, neuron[1:500, ]), "no spike_history\\(\\) term of its response")
  fg <- vb(mpg ~ wt, data = mtcars, control = quiet)
  expect_error(bits_per_spike(fg), "poisson")
  expect_error(bits_per_spike(fit0, neuron[1:500, ][neuron$spikes[1:500] == 0, ]), "no spikes")
})

test_that("a fitted spike_history() term remembers its basis (makepredictcall)", {
  B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
  fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = neuron[1:4000, ],
            family = poisson(), exposure = 0.005, control = quiet)
  nd <- neuron[4001:8000, ]
  # the held-out linear predictor by hand, with the basis used at fitting
  X <- cbind(1, nd$stim, spike_history(nd$spikes, B, nd$trial))
  ref <- drop(X %*% coef(fit)) + log(0.005)
  p1 <- predict(fit, nd); b1 <- bits_per_spike(fit, nd)
  expect_equal(unname(p1), ref, tolerance = 1e-10)
  B <- diag(4)              # redefine the global basis after fitting ...
  expect_equal(unname(predict(fit, nd)), ref, tolerance = 1e-10)
  expect_identical(bits_per_spike(fit, nd), b1)
  expect_equal(filters(fit)[[1]]$lag, seq_len(nrow(raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005))))
  rm(B)                     # ... or remove it
  expect_identical(bits_per_spike(fit, nd), b1)
  expect_equal(nrow(simulate_spikes(fit, nd[1:200, ], seed = 1)), 200L)
})

test_that("history() no longer masks utils::history: not exported, a deprecated alias", {
  expect_false("history" %in% getNamespaceExports("vbayes"))
  expect_true("spike_history" %in% getNamespaceExports("vbayes"))
  expect_warning(h <- vbayes:::history(c(0, 1, 0, 2), diag(2)), "spike_history")
  expect_equal(unclass(h), unclass(spike_history(c(0, 1, 0, 2), diag(2))))
})
