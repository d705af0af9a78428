# Fuzz cases for the GLM SGVB fast path of issue 18 (src/sgvb.c: the
# Newton-like steps, the control variates, the short windows; R/sgvb.R: the
# chord-Newton Laplace start); see the comment in test-fuzz.R.
fuzz_topic_sgvb <- list(
  setup = function(fx, fixture) {
    local(envir = fx, {
      set.seed(181)
      Xg <- cbind("(Intercept)" = 1, a = rnorm(40), b = rnorm(40))
      yp <- rpois(40, exp(0.3 + 0.5 * Xg[, "a"]))
      yb2 <- rbinom(40, 1, plogis(Xg[, "b"]))
      sq <- vb_control(quiet = TRUE)
      fx_fit_p <- vb_fit(Xg, yp, family = poisson(), control = sq)
    })
  },
  cases = function() list(sgvb_glm = list(
    fz_ok(vb_fit(Xg, yp, family = poisson(), method = "sgvb", control = sq), check = fz_fit,
          label = "poisson fullrank SGVB (Newton steps, control variates)"),
    fz_ok(vb_fit(Xg, yb2, family = binomial(), approx = "meanfield", method = "sgvb", control = sq),
          check = fz_fit, label = "binomial meanfield SGVB"),
    fz_ok(vb_fit(Xg, yp, family = poisson(), method = "sgvb", control = vb_control(quiet = TRUE, window = 2L)),
          check = fz_fit, label = "SGVB with the shortest window"),
    fz_either(vb_fit(Xg, yp * 0, family = poisson(), approx = "meanfield", method = "sgvb", control = sq),
              check = fz_fit, label = "poisson SGVB with all-zero counts"),
    fz_either(vb_fit(Xg, yp, family = poisson(), method = "sgvb",
                     control = vb_control(quiet = TRUE, step_size = 50)),
              check = fz_fit, label = "SGVB with a step size that overshoots"),
    fz_ok(vb_fit(Xg, yb2, family = binomial(), method = "sgvb",
                 control = vb_control(quiet = TRUE, sgvb_maxit = 7L)),
          check = fz_fit, label = "SGVB cut before its criterion (warns)"),
    fz_err(.Call(vbayes:::C_sgvb_glm_start, vbayes:::fit_model(fx_fit_p), c(0, NA, 0)),
           label = "the GLM start refuses a non-finite start"),
    fz_err(.Call(vbayes:::C_sgvb_glm_start, vbayes:::fit_model(fx_fit_p), 0),
           label = "the GLM start refuses a start of the wrong length")
  )),
  workload = alist(
    vb_fit(Xg, yp, family = poisson(), method = "sgvb", control = sq),
    vb_fit(Xg, yb2, family = binomial(), approx = "meanfield", method = "sgvb", control = sq)
  )
)
