# Fuzz cases for the fast paths of issue 18 (src/glm_cavi.c gaussian
# sufficient statistics, src/expect.c binomial expansion) and the progress
# messages (src/util.c); see the comment in test-fuzz.R.
fuzz_topic_speed <- list(
  setup = function(fx, fixture) {
    local(envir = fx, {
      set.seed(18)
      Xs <- cbind("(Intercept)" = 1, a = rnorm(30), b = rnorm(30))
      ys <- drop(Xs %*% c(1, 2, -1)) + rnorm(30)
      ws <- c(rep(0, 27), 1, 1, 1)
      Xc <- cbind(Xs, c = 2 * Xs[, "a"])   # collinear
      yb <- rbinom(30, 1, 0.5)
    })
  },
  cases = function() list(speed = list(
    fz_ok(vb_fit(Xs, ys, weights = ws, control = quiet), check = fz_fit,
          label = "gaussian fullrank, three rows with weight"),
    fz_ok(vb_fit(Xs, ys, offset = rep(1e3, 30), control = quiet), check = fz_fit,
          label = "gaussian fullrank, a large offset"),
    fz_either(vb_fit(Xc, ys, control = quiet), check = fz_fit,
              label = "gaussian fullrank, collinear design"),
    fz_ok(vb_fit(Xs, yb, family = binomial(), prior = normal(0, 100), control = quiet), check = fz_fit,
          label = "binomial with wide priors (wide q)"),
    fz_ok(vb_fit(Xs, ys, weights = ws, approx = "meanfield", control = quiet), check = fz_fit,
          label = "gaussian meanfield (sufficient statistics), three rows with weight"),
    fz_either(vb_fit(Xc, yb, family = binomial(), approx = "meanfield", control = quiet), check = fz_fit,
              label = "binomial meanfield (all coordinates at once), collinear design"),
    fz_ok(withCallingHandlers(vb_fit(Xs, ys), message = function(m) invokeRestart("muffleMessage")),
          check = fz_fit, label = "progress handler that muffles")
  )),
  workload = alist(
    vb_fit(Xs, ys, weights = ws, control = quiet),
    vb_fit(Xs, yb, family = binomial(), approx = "meanfield", control = quiet),
    vb_fit(Xs, ys, approx = "meanfield", control = quiet)
  )
)
