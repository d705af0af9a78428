# Fuzz cases of vb_amortized() and its methods (driven by test-fuzz.R).
fuzz_topic_amortized <- list(
  setup = function(fx, fixture) {
    local(envir = fx, {
      set.seed(14)
      Yam <- matrix(rpois(60 * 5, 3), 60)
      Gam <- matrix(rnorm(60 * 5), 60)
      actl <- amortized_control(epochs = 5, quiet = TRUE)
    })
    fixture("amz", vb_amortized(Yam, 1, encoder = mlp(hidden = 3), control = actl))
    fixture("amzg", vb_amortized(Gam, 2, decoder = "gaussian", encoder = mlp(hidden = integer(0)),
                                 noise = "isotropic", control = actl))
    fixture("amzl", vb_amortized(Yam, 2, encoder = mlp(hidden = 3, covariance = "lowrank", rank = 1),
                                 control = actl))
  },
  cases = function() list(
    vb_amortized = list(
      fz_err(vb_amortized(replace(Yam, 1, NA), 1)), fz_err(vb_amortized(replace(Yam, 1, -1), 1)),
      fz_err(vb_amortized(replace(Yam, 1, 0.5), 1)), fz_err(vb_amortized(replace(Yam, 1, Inf), 1)),
      fz_err(vb_amortized(Yam, 5)), fz_err(vb_amortized(Yam, 0)), fz_err(vb_amortized(Yam, NA)),
      fz_err(vb_amortized(Yam, "1")), fz_err(vb_amortized(Yam, 1.5)),
      fz_err(vb_amortized(Yam[1, , drop = FALSE], 1)), fz_err(vb_amortized(Yam[0, ], 1)),
      fz_err(vb_amortized(matrix("a", 4, 3), 1)), fz_err(vb_amortized(list(Yam), 1)),
      fz_err(vb_amortized(Yam, 1, exposure = Inf)), fz_err(vb_amortized(Yam, 1, exposure = 0)),
      fz_err(vb_amortized(Yam, 1, exposure = c(NA, rep(1, 59)))), fz_err(vb_amortized(Yam, 1, exposure = 1:3)),
      fz_err(vb_amortized(Gam, 1, decoder = "gaussian", exposure = 1)),
      fz_err(vb_amortized(Yam, 1, decoder = "bogus")), fz_err(vb_amortized(Yam, 1, encoder = "mlp")),
      fz_err(vb_amortized(Yam, 1, learn_decoder = NA)), fz_err(vb_amortized(Yam, 1, learn_decoder = FALSE)),
      fz_err(vb_amortized(Yam, 1, params = list(C = matrix(NA, 5, 1)))),
      fz_err(vb_amortized(Yam, 1, params = list(d = 1:2))), fz_err(vb_amortized(Yam, 1, params = list(zz = 1))),
      fz_err(vb_amortized(Gam, 1, decoder = "gaussian", params = list(psi = -1))),
      fz_err(vb_amortized(Yam, 1, validation = -1)), fz_err(vb_amortized(Yam, 1, validation = 1:60)),
      fz_err(vb_amortized(Yam, 1, validation = c(1, 1))), fz_err(vb_amortized(Yam, 1, control = "a")),
      fz_err(vb_amortized(Yam, 1, control = list(epochs = 0))), fz_err(vb_amortized(Yam, 1, control = list(bogus = 1))),
      fz_err(mlp(hidden = -1)), fz_err(mlp(hidden = NA)), fz_err(mlp(activation = "bogus")), fz_err(mlp(transform = "x")),
      fz_err(amortized_control(epochs = 1e10)), fz_err(amortized_control(step_size = 0)),
      fz_err(amortized_control(quiet = NA)), fz_err(amortized_control(tol = NA)),
      fz_err(amortized_control(estimator = "bogus")), fz_err(amortized_control(estimator = "reparam", draws = 0)),
      fz_err(amortized_control(check_every = 0)), fz_err(mlp(covariance = "lowrank", rank = 0)),
      fz_err(mlp(covariance = "bogus")), fz_err(vb_amortized(Yam, 1, encoder = mlp(covariance = "lowrank", rank = 2))),
      fz_err(vb_amortized(Yam, 2, encoder = mlp(covariance = "lowrank"), control = list(estimator = "reparam"))),
      fz_ok(vb_amortized(Gam, 2, decoder = "gaussian", encoder = mlp(hidden = 2, covariance = "lowrank", rank = 2),
                         control = actl), check = fz_fit),
      fz_ok(vb_amortized(Yam, 1, encoder = mlp(hidden = 2), control = list(epochs = 3, quiet = TRUE, estimator = "reparam")),
            check = fz_fit),
      fz_ok(amortized_control(epochs = 3), check = function(v, w) identical(v$epochs, 3L)),
      fz_ok(mlp(hidden = integer(0)), check = function(v, w) inherits(v, "vb_mlp")),
      fz_ok(vb_amortized(Yam, 1, encoder = mlp(hidden = 3), control = actl), check = fz_fit),
      fz_ok(vb_amortized(Yam, 2, encoder = mlp(hidden = c(3, 3), activation = "relu"), exposure = 0.5,
                         validation = 0, control = actl), check = fz_fit),
      fz_ok(vb_amortized(Yam * 0, 1, encoder = mlp(hidden = 2), control = actl), check = fz_fit,
            label = "vb_amortized: all counts zero"),
      fz_ok(vb_amortized(Gam, 1, decoder = "gaussian", encoder = mlp(activation = "softplus", hidden = 2),
                         control = list(epochs = 5, quiet = TRUE)), check = fz_fit),
      fz_ok(vb_amortized(Yam[1:2, ], 1, encoder = mlp(hidden = 2), control = actl), check = fz_fit,
            label = "vb_amortized: two trials"),
      fz_either(vb_amortized(Gam * 1e150, 1, decoder = "gaussian", control = actl), check = fz_fit)
    ),
    amortized_methods = list(
      fz_ok(predict(amz, Yam[1:3, ], refine = 2)), fz_ok(predict(amzg, refine = 1)),
      fz_ok(elbo(amz, Yam[1:4, ])), fz_ok(coef(amzg)), fz_ok(elbo(amz)),
      fz_ok(summary(amz, trials = 5, K = 5)$trials[, c("amortization_gap", "gap_refined", "iwae")]),
      fz_ok(summary(amzg, trials = 5, K = 0)$trials[, c("amortization_gap", "approximation_gap")]),
      fz_err(predict(amz, Yam[, 1:3])), fz_err(predict(amz, refine = -1)), fz_err(predict(amz, refine = NA)),
      fz_err(predict(amz, replace(Yam, 2, NA))), fz_err(predict(amz, Yam, exposure = -1)),
      fz_err(predict(amz, replace(Yam, 2, -1))), fz_err(predict(amz, replace(Yam, 2, 0.5))),
      fz_err(predict(amz, list(Yam))), fz_err(predict(amz, Yam, elbo = NA)),
      fz_ok(predict(amzl, Yam[1:3, ], refine = 2)), fz_ok(predict(amzl, Yam[1:3, ])$cov_factor),
      fz_ok(elbo(amzl, Yam[1:4, ], refine = 1)),
      fz_ok(summary(amzl, trials = 3, K = 3)$trials[, c("amortization_gap", "approximation_gap", "iwae")]),
      fz_err(predict(amz, exposure = 1)), fz_err(summary(amz, trials = 0)), fz_err(summary(amz, K = -1)),
      fz_err(vb_diagnose(amz))
    )),
  workload = alist(
    vb_amortized(Yam, 1, encoder = mlp(hidden = 3), control = actl),
    vb_amortized(Gam, 2, decoder = "gaussian", control = actl),
    predict(amz, Yam[1:5, ], refine = 2),
    predict(amz, Yam[1:5, ]),
    predict(amzl, Yam[1:5, ], refine = 2)
  )
)
