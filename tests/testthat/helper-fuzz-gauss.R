# Fuzz cases for the gaussian fast path (issue 18: the rss from sufficient
# statistics, no stored linear-predictor variances, the branch-free design
# scan and finiteness probe); see the comment in test-fuzz.R.
fuzz_topic_gauss <- list(
  setup = function(fx, fixture) {
    local(envir = fx, {
      set.seed(1818)
      gzX <- cbind("(Intercept)" = 1, a = 1e8 + rnorm(25), b = rnorm(25))
      gzy <- 1e6 + drop(gzX[, 3]) + rnorm(25)
      gzw <- rep(c(1, 0, 2), length.out = 25)
      gzXinf <- gzX; gzXinf[7, 3] <- Inf
      gzXbig <- gzX; gzXbig[1:2, 3] <- 1e308
    })
  },
  cases = function() list(gauss = list(
    fz_ok(vb_fit(gzX, gzy, weights = gzw, control = quiet), check = fz_fit,
          label = "gaussian, a 1e8 column, zero weights, a large intercept"),
    fz_ok(vb_fit(gzX, gzy, approx = "meanfield", prior_intercept = normal(0, 1e7), control = quiet),
          check = fz_fit, label = "gaussian meanfield on the raw (uncentred) design"),
    fz_ok(deviance(vb_fit(gzX, gzy, weights = gzw, control = quiet)),
          check = function(d, ...) if (!(is.finite(d) && d > 0)) "the deviance is not a positive number" else TRUE,
          label = "deviance of a gaussian fit"),
    fz_err(vb_fit(gzXinf, gzy, control = quiet), pattern = "NA, NaN or infinite"),
    fz_err(vb_fit(gzXbig, gzy, control = quiet), pattern = "too large")
  )),
  workload = alist(
    vb_fit(gzX, gzy, weights = gzw, control = quiet),
    vb_fit(gzX, gzy, approx = "meanfield", prior_intercept = normal(0, 1e7), control = quiet)
  )
)
