# Fuzz cases of vb_stan() (test-fuzz.R collects fuzz_topic_*).  None needs a
# compiled model: bad objects, programs that stanc rejects in a second, and
# bad arguments checked before compilation.  vb_stan() makes no .Call of its
# own, so there is no workload to record.
fuzz_topic_stan <- list(
  setup = function(fx, fixture) {
    fx$stan_ok_code <- "data { int N; vector[N] y; } parameters { real mu; } model { y ~ normal(mu, 1); }"
  },
  cases = function() list(
    stan = list(
      fz_err(vb_stan(42)), fz_err(vb_stan(NULL)), fz_err(vb_stan(NA_character_)),
      fz_err(vb_stan(list(a = 1))), fz_err(vb_stan(character(0))),
      fz_err(vb_stan("no_such_program.stan")),
      fz_err(vb_stan("parameters { real mu } model { }"), pattern = "does not compile|rstan"),
      fz_err(vb_stan("parameters { int k; } model { }"), pattern = "discrete|rstan"),
      fz_err(vb_stan("model { target += foo; }"), pattern = "does not compile|rstan"),
      fz_err(vb_stan(stan_ok_code, data = 1:3)), fz_err(vb_stan(stan_ok_code, data = "y")),
      fz_err(vb_stan(stan_ok_code, data = list(1, 2))),
      fz_err(vb_stan(stan_ok_code, data = list(N = 2L), approx = "bogus")),
      fz_err(vb_stan(stan_ok_code, data = list(N = 2L), init_method = "x")),
      fz_err(vb_stan(stan_ok_code, data = list(N = 2L), control = "fast"))
    )
  ),
  workload = alist()
)
