# Fuzz cases of vb_predictive_coding() and pc_control() (issue 15); see test-fuzz.R.
fuzz_topic_pc <- list(
  setup = function(fx, fixture) {
    local(envir = fx, {
      set.seed(15)
      pcy <- matrix(rnorm(30), 10) %*% matrix(rnorm(9), 3) + matrix(rnorm(30, sd = 0.3), 10)
      pcq <- pc_control(quiet = TRUE, maxit = 20)
      pcsq <- list(f = function(v) v^2, df = function(v) 2 * v)
    })
    fixture("pc_fit", vb_predictive_coding(pcy, layers = c(2, 1), control = pcq))
  },
  cases = function() list(
    pc_control = list(
      fz_err(pc_control(dt = 0)), fz_err(pc_control(dt = NA)), fz_err(pc_control(dt = "a")),
      fz_err(pc_control(t_max = -1)), fz_err(pc_control(dt = 1, t_max = 0.1)),
      fz_err(pc_control(dt = 1e-9, t_max = 1)), fz_err(pc_control(maxit = 0)),
      fz_err(pc_control(tol = 0)), fz_err(pc_control(lr = -1)), fz_err(pc_control(lr = Inf)),
      fz_err(pc_control(errors = "slow")), fz_err(pc_control(cov = "banded")),
      fz_err(pc_control(trajectory = NA)), fz_err(pc_control(quiet = "no")),
      fz_ok(pc_control(dt = 0.1, t_max = 1), check = function(v, w) inherits(v, "pc_control"))
    ),
    vb_predictive_coding = list(
      fz_err(vb_predictive_coding(pcy, layers = 1, weights = list(matrix(1, 2, 1)))),
      fz_err(vb_predictive_coding(pcy, layers = c(2, 1), weights = list(matrix(1, 3, 2)))),
      fz_err(vb_predictive_coding(pcy, layers = 1, prior_var = 0)),
      fz_err(vb_predictive_coding(pcy, layers = 1, prior_var = NA)),
      fz_err(vb_predictive_coding(pcy, layers = 1, obs_var = -1)),
      fz_err(vb_predictive_coding(pcy, layers = 1, obs_var = matrix(1, 3, 3))),
      fz_err(vb_predictive_coding(pcy, layers = 1, prior_mean = c(1, 2))),
      fz_err(vb_predictive_coding(pcy, layers = 1, prior_mean = Inf)),
      fz_err(vb_predictive_coding(pcy, layers = NA)), fz_err(vb_predictive_coding(pcy, layers = 1.5)),
      fz_err(vb_predictive_coding(pcy, layers = integer(0))),
      fz_err(vb_predictive_coding("a", layers = 1)), fz_err(vb_predictive_coding(pcy[0, ], layers = 1)),
      fz_err(vb_predictive_coding(rbind(pcy, Inf), layers = 1)),
      fz_err(vb_predictive_coding(pcy, layers = 1, activation = "relu")),
      fz_err(vb_predictive_coding(pcy, layers = 1, activation = list(f = 1, df = 2))),
      fz_err(vb_predictive_coding(pcy, layers = 1, weights = list(matrix(1, 3, 1)), learn = character(),
                                  activation = list(f = function(v) v / 0, df = function(v) v))),
      fz_err(vb_predictive_coding(pcy, layers = 1, weights = list(matrix(1, 3, 1)), learn = character(),
                                  activation = list(f = function(v) stop("no"), df = function(v) v))),
      fz_err(vb_predictive_coding(pcy, layers = 1, learn = "all")),
      fz_err(vb_predictive_coding(pcy, layers = 1, q = "point")),
      fz_err(vb_predictive_coding(pcy, layers = 1, inference = "rk4")),
      fz_err(vb_predictive_coding(pcy, layers = 1, control = 3)),
      fz_ok(vb_predictive_coding(matrix(2), layers = 1, activation = pcsq, weights = list(matrix(1)),
                                 prior_mean = 3, learn = character(), inference = "euler",
                                 control = pc_control(dt = 0.01, t_max = 5, quiet = TRUE)),
            check = function(v, w) fz_finite(v[c("elbo", "mean", "cov")])),
      fz_either(vb_predictive_coding(pcy, layers = 2, activation = "tanh", control = pcq),
                check = function(v, w) fz_finite(v[c("elbo", "mean", "weights", "Sigma")])),
      fz_either(vb_predictive_coding(pcy, layers = 3, learn = "precisions", q = "delta",
                                     weights = list(diag(3)), control = pcq),
                check = function(v, w) if (length(w)) TRUE else "a collapse without a warning"),
      fz_ok(predict(pc_fit, pcy[1:2, ])), fz_err(predict(pc_fit, matrix(1, 2, 2))),
      fz_ok(elbo(pc_fit)), fz_ok(compare_models(a = pc_fit, b = pc_fit),
                                 check = function(v, w) fz_finite(v$elbo))
    )
  ),
  workload = alist(
    vb_predictive_coding(pcy, layers = c(2, 1), control = pcq),
    vb_predictive_coding(matrix(2), layers = 1, activation = pcsq, weights = list(matrix(1)),
                         prior_mean = 3, learn = character(), inference = "euler",
                         control = pc_control(dt = 0.01, t_max = 2, errors = "interneuron", quiet = TRUE))
  )
)
