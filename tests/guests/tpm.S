/* TPM guest: a polling driver for the TPM 2.0 CRB interface at 0xfed40000 (locality 0),
 * printing every step on COM1.
 *
 * Flow: find the TPM2 ACPI table through the RSDP (XSDT, or RSDT for an ACPI 1.0 RSDP)
 * and print its start method and control area ("tpm2: start method 7 control area
 * fed40040", or "tpm2: none"); print INTF_ID's low word; request locality 0 (LOC_CTRL
 * requestAccess, wait for LOC_STS granted) and print LOC_STATE; set cmdReady (CTRL_REQ,
 * wait until it clears and CTRL_STS.tpmIdle is 0) and print the buffer's address and
 * size; then TPM2_Startup(TPM_SU_CLEAR) ("startup rc XXXXXXXX") and TPM2_GetRandom(16)
 * ("random rc XXXXXXXX len N: b0 b1 ..."), each written into the buffer, started with
 * CTRL_START and finished when CTRL_START reads 0 again; then ACPI power-off.
 *
 * With a command line starting with "loop", it says "looping" instead and sends
 * GetRandom again and again (a pause between rounds) until one fails, then prints
 * "after failure: rc XXXXXXXX sts XXXXXXXX" (the response code and CTRL_STS), sends one
 * more GetRandom, prints "still running" and powers off: the test kills swtpm meanwhile.
 *
 * With a command line starting with "reset", the first boot resets the machine (i8042)
 * after GetRandom, and the second says "second boot" and powers off: a TPM reset with
 * the platform's lets the second Startup succeed too (TPM_RC_INITIALIZE otherwise).
 *
 * With a command line starting with "pcrs", it reads PCR 16 of the SHA-256 bank
 * (TPM2_PCR_Read: "pcr16 rc XXXXXXXX value <64 hex digits>", the value only when rc is 0),
 * extends it with a digest of 32 0x5a bytes (TPM2_PCR_Extend, empty password session:
 * "extend rc XXXXXXXX"), reads it again, says "extended" and then reads and prints it
 * again and again, a pause between reads, without ever sending Startup again: the save
 * tests save and resume it meanwhile.
 *
 * A step that times out prints "FAILED: <what>" and halts.
 *
 * Under QEMU (SeaBIOS boots the PVH note; it sends TPM2_Startup itself, so the guest's
 * Startup gets TPM_RC_INITIALIZE there):
 *   swtpm socket --tpm2 --tpmstate dir=D --ctrl type=unixio,path=S &
 *   qemu-system-x86_64 -accel kvm -M q35 -m 64M -nodefaults -display none \
 *     -bios /usr/share/seabios/bios-256k.bin -serial stdio -kernel tpm.elf \
 *     -chardev socket,id=c,path=S -tpmdev emulator,id=t,chardev=c -device tpm-crb,tpmdev=t */
#include "pvh_note.S"

#define CRB		0xfed40000
#define LOC_STATE	0x00
#define LOC_CTRL	0x08
#define LOC_STS		0x0c
#define INTF_ID		0x30
#define CTRL_REQ	0x40
#define CTRL_STS	0x44
#define CTRL_START	0x4c
#define CMD_SIZE	0x58
#define CMD_LADDR	0x5c
#define BUF		0x80
#define SPINS		0x1000000	/* polls before a step times out */
#define LOOPS		3000		/* loop mode: GetRandom rounds before giving up */
#define GAP		0x10000		/* loop mode: spins between rounds */
#define PCR_GAP		0x80000		/* pcrs mode: spins between reads */

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov %ebx, %ebp			/* hvm_start_info */
	call find_tpm2
	mov $s_intf, %esi
	call puts
	mov CRB + INTF_ID, %eax
	call puthex32
	call newline

	/* Locality 0. */
	movl $1, CRB + LOC_CTRL
	mov $SPINS, %ecx
1:	testl $1, CRB + LOC_STS
	jnz 2f
	loop 1b
	mov $s_no_locality, %esi
	jmp fail
2:	mov $s_locality, %esi
	call puts
	mov CRB + LOC_STATE, %eax
	call puthex32
	call newline

	/* cmdReady: the request bit clears and the TPM leaves idle. */
	movl $1, CRB + CTRL_REQ
	mov $SPINS, %ecx
3:	testl $1, CRB + CTRL_REQ
	jnz 4f
	testl $2, CRB + CTRL_STS
	jz 5f
4:	loop 3b
	mov $s_not_ready, %esi
	jmp fail
5:	mov $s_ready, %esi
	call puts
	mov CRB + CMD_LADDR, %eax
	call puthex32
	mov $s_size, %esi
	call puts
	mov CRB + CMD_SIZE, %eax
	call putdec
	call newline

	mov $cmd_startup, %esi
	mov $12, %ecx
	call tpm_run
	mov %eax, %ebx
	mov $s_startup, %esi
	call puts
	mov %ebx, %eax
	call puthex32
	call newline

	call get_random

	mov 24(%ebp), %esi		/* cmdline_paddr */
	cmpl $0x73726370, (%esi)	/* "pcrs" */
	je pcr_mode
	cmpl $0x706f6f6c, (%esi)	/* "loop" */
	je loop_mode
	cmpl $0x65736572, (%esi)	/* "rese(t)" */
	je reset_mode
	jmp acpi_poweroff

/* CMOS byte 0x40 (kept across a reset) counts boots: reset after the first. */
reset_mode:
	mov $0x40, %al
	out %al, $0x70
	in $0x71, %al
	test %al, %al
	jnz 1f
	mov $1, %al
	out %al, $0x71
	mov $s_resetting, %esi
	call puts
	mov $0xfe, %al			/* i8042: pulse the reset line */
	out %al, $0x64
2:	cli
	hlt
	jmp 2b
1:	mov $s_second, %esi
	call puts
	jmp acpi_poweroff

loop_mode:
	mov $s_looping, %esi
	call puts
	mov $LOOPS, %edx
1:	mov $GAP, %ecx
2:	loop 2b
	mov $cmd_random, %esi
	mov $12, %ecx
	call tpm_run
	test %eax, %eax
	jnz 3f
	dec %edx
	jnz 1b
	mov $s_never_failed, %esi
	jmp fail
3:	mov %eax, %ebx
	mov $s_after, %esi
	call puts
	mov %ebx, %eax
	call puthex32
	mov $s_sts, %esi
	call puts
	mov CRB + CTRL_STS, %eax
	call puthex32
	call newline
	call get_random
	mov $s_alive, %esi
	call puts
	jmp acpi_poweroff

pcr_mode:
	call pcr_read
	mov $cmd_extend, %esi
	mov $cmd_extend_end - cmd_extend, %ecx
	call tpm_run
	mov %eax, %ebx
	mov $s_extend, %esi
	call puts
	mov %ebx, %eax
	call puthex32
	call newline
	call pcr_read
	mov $s_extended, %esi
	call puts
1:	mov $PCR_GAP, %ecx
2:	loop 2b
	call pcr_read
	jmp 1b

/* pcr_read: TPM2_PCR_Read of PCR 16 (SHA-256), printed as
 * "pcr16 rc XXXXXXXX[ value <the digest in hex>]". */
pcr_read:
	push %ebx
	push %ecx
	push %esi
	mov $cmd_pcr_read, %esi
	mov $cmd_pcr_read_end - cmd_pcr_read, %ecx
	call tpm_run
	mov %eax, %ebx
	mov $s_pcr, %esi
	call puts
	mov %ebx, %eax
	call puthex32
	test %ebx, %ebx
	jnz 9f
	mov $s_value, %esi
	call puts
	/* header 10, pcrUpdateCounter 4, the selection 10, digest count 4, size 2 */
	mov $(CRB + BUF + 30), %esi
	mov $32, %ecx
1:	lodsb
	call puthex8
	loop 1b
9:	call newline
	pop %esi
	pop %ecx
	pop %ebx
	ret

/* tpm_run: copy %ecx bytes at %esi into the CRB buffer, start the command and wait for
 * CTRL_START to read 0; %eax = the response code (big-endian in the buffer). */
tpm_run:
	push %ecx
	push %esi
	push %ebx
	mov $(CRB + BUF), %ebx
1:	lodsb
	mov %al, (%ebx)
	inc %ebx
	loop 1b
	movl $1, CRB + CTRL_START
	mov $SPINS, %ecx
2:	testl $1, CRB + CTRL_START
	jz 3f
	loop 2b
	mov $s_timeout, %esi
	jmp fail
3:	mov CRB + BUF + 6, %eax
	bswap %eax
	pop %ebx
	pop %esi
	pop %ecx
	ret

/* get_random: TPM2_GetRandom(16), printed as "random rc XXXXXXXX[ len N: b0 b1 ...]". */
get_random:
	push %ebx
	push %ecx
	push %esi
	mov $cmd_random, %esi
	mov $12, %ecx
	call tpm_run
	mov %eax, %ebx
	mov $s_random, %esi
	call puts
	mov %ebx, %eax
	call puthex32
	test %ebx, %ebx
	jnz 9f
	mov $s_len, %esi
	call puts
	movzwl CRB + BUF + 10, %eax
	xchg %al, %ah			/* TPM2B size, big-endian */
	mov %eax, %ecx
	call putdec
	mov $':', %al
	call putc
	cmp $32, %ecx
	ja 9f
	test %ecx, %ecx
	jz 9f
	mov $(CRB + BUF + 12), %esi
1:	mov $' ', %al
	call putc
	lodsb
	call puthex8
	loop 1b
9:	call newline
	pop %esi
	pop %ecx
	pop %ebx
	ret

/* find_tpm2: print the TPM2 table's start method and control area, or "tpm2: none". */
find_tpm2:
	mov $0xe0000, %esi
1:	cmpl $0x20445352, (%esi)	/* "RSD " */
	jne 2f
	cmpl $0x20525450, 4(%esi)	/* "PTR " */
	je 3f
2:	add $16, %esi
	cmp $0x100000, %esi
	jb 1b
	jmp 8f
3:	cmpb $2, 15(%esi)		/* revision: 2 and up have an XSDT */
	jb 4f
	mov 24(%esi), %esi
	mov $8, %edx
	jmp 5f
4:	mov 16(%esi), %esi
	mov $4, %edx
5:	mov 4(%esi), %ecx
	sub $36, %ecx
	shr $2, %ecx
	cmp $8, %edx
	jne 6f
	shr $1, %ecx
6:	test %ecx, %ecx
	jz 8f
	lea 36(%esi), %edi
7:	mov (%edi), %ebx
	cmpl $0x324d5054, (%ebx)	/* "TPM2" */
	je 9f
	add %edx, %edi
	loop 7b
8:	mov $s_no_tpm2, %esi
	call puts
	ret
9:	mov $s_tpm2, %esi
	call puts
	mov 48(%ebx), %eax
	call putdec
	mov $s_control, %esi
	call puts
	mov 40(%ebx), %eax
	call puthex32
	call newline
	ret

newline:
	push %eax
	mov $'\n', %al
	call putc
	pop %eax
	ret

/* fail: "FAILED: " + the string at %esi, then halt. */
fail:
	push %esi
	mov $s_failed, %esi
	call puts
	pop %esi
	call puts
	call newline
1:	cli
	hlt
	jmp 1b

#include "lib.S"
#include "hex.S"

	.section .rodata
/* TPM2_Startup(TPM_SU_CLEAR): tag 0x8001, size 12, TPM_CC_Startup 0x144, 0x0000. */
cmd_startup:	.byte 0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0
/* TPM2_GetRandom(16): TPM_CC_GetRandom 0x17b, bytesRequested 16. */
cmd_random:	.byte 0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 16
/* TPM2_PCR_Extend(PCR 16): tag TPM_ST_SESSIONS, size 65, TPM_CC_PCR_Extend 0x182, the
 * handle, a 9-byte password session (TPM_RS_PW, no nonce, no attributes, empty
 * password), then one digest: TPM_ALG_SHA256 and 32 bytes of 0x5a. */
cmd_extend:	.byte 0x80, 0x02, 0, 0, 0, 65, 0, 0, 0x01, 0x82, 0, 0, 0, 16
		.byte 0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0
		.byte 0, 0, 0, 1, 0, 0x0b
		.fill 32, 1, 0x5a
cmd_extend_end:
/* TPM2_PCR_Read: TPM_CC_PCR_Read 0x17e, one selection: SHA-256, 3 bytes, PCR 16. */
cmd_pcr_read:	.byte 0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e
		.byte 0, 0, 0, 1, 0, 0x0b, 3, 0, 0, 1
cmd_pcr_read_end:
s_tpm2:		.asciz "tpm2: start method "
s_control:	.asciz " control area "
s_no_tpm2:	.asciz "tpm2: none\n"
s_intf:		.asciz "intf "
s_locality:	.asciz "locality 0 granted, state "
s_ready:	.asciz "ready: buffer "
s_size:		.asciz " size "
s_startup:	.asciz "startup rc "
s_random:	.asciz "random rc "
s_len:		.asciz " len "
s_looping:	.asciz "looping\n"
s_after:	.asciz "after failure: rc "
s_sts:		.asciz " sts "
s_alive:	.asciz "still running\n"
s_resetting:	.asciz "resetting\n"
s_second:	.asciz "second boot\n"
s_pcr:		.asciz "pcr16 rc "
s_value:	.asciz " value "
s_extend:	.asciz "extend rc "
s_extended:	.asciz "extended\n"
s_failed:	.asciz "FAILED: "
s_no_locality:	.asciz "locality 0 not granted"
s_not_ready:	.asciz "cmdReady not taken"
s_timeout:	.asciz "CTRL_START never cleared"
s_never_failed:	.asciz "no command failed"

	.bss
	.align 16
	.space 4096
stack_top:
